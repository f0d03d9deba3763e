"""The web page (ckpt-server --http-listen) in a real browser.

A real ckpt-server with access control on serves checkpoints imported with
the real `ckpt` CLI from .pt files written by real PyTorch (Debian's, this
script's interpreter); Debian's headless Chromium, driven by chromium-driver
through Selenium, logs in with a token and reads what a user sees: names,
sizes, the highlighted NaN row, a diff row, the lineage, and the refusals.
Plain HTTP checks (status codes, headers, read-only) use urllib.

Usage: web_page_test.py --server-bin PATH --cli-bin PATH
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import torch
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

ARGS = None
READER = "reader-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef01"
OUTSIDER = "outsider-token-0123456789abcd"
# The stylesheet's highlight of a row holding NaN/Inf (#fcc).
NONFINITE_BACKGROUND = "rgba(255, 204, 204, 1)"


def start_server(tmp, name, flags):
    """ckpt-server on free ports; returns (process, log text reader, ports)."""
    log_path = os.path.join(tmp, name + ".log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [ARGS.server_bin, "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, name),
             "--metrics-listen", "", *flags],
            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        with open(log_path, errors="replace") as f:
            text = f.read()
        m = re.search(r"listening on port ([0-9]+)", text)
        if m:
            web = re.search(r"web page on port ([0-9]+)", text)
            return proc, text, int(m.group(1)), int(web.group(1)) if web else 0
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"ckpt-server did not start:\n{text}")
        time.sleep(0.05)


def cli(port, token, *args):
    subprocess.run([ARGS.cli_bin, "--server", f"127.0.0.1:{port}", "--token", token, *args],
                   check=True, stdout=subprocess.DEVNULL)


class WebPageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ckpt-web-")
        tokens = os.path.join(cls.tmp, "tokens")
        with open(tokens, "w") as f:
            f.write(f"reader {READER} read team\n"
                    f"admin {ADMIN} admin *\n"
                    f"outsider {OUTSIDER} read elsewhere\n")
        cls.server, _, port, cls.web_port = start_server(
            cls.tmp, "data", ["--tokens-file", tokens, "--http-listen", "127.0.0.1:0"])
        cls.base = f"http://127.0.0.1:{cls.web_port}"

        # team/run-1@1 finite; @2: fc.weight scaled by 1.1, a NaN in fc.bias,
        # a key with markup; team/run-2@1 warm-started from team/run-1@2.
        torch.manual_seed(0)
        sd = {"model": {"fc.weight": torch.randn(64, 32), "fc.bias": torch.zeros(64),
                        "bn.running_mean": torch.ones(32)}, "step": 7}
        a, b = os.path.join(cls.tmp, "a.pt"), os.path.join(cls.tmp, "b.pt")
        torch.save(sd, a)
        sd["model"]["fc.weight"] = sd["model"]["fc.weight"] * 1.1
        sd["model"]["fc.bias"][3] = float("nan")
        sd["model"]["emb<b>"] = torch.arange(5)
        torch.save(sd, b)
        cli(port, ADMIN, "import", a, "team/run-1", "--step", "100")
        cli(port, ADMIN, "import", b, "team/run-1", "--step", "200")
        cli(port, ADMIN, "import", a, "team/run-2", "--parent", "team/run-1@2")
        cli(port, ADMIN, "import", a, "elsewhere/secret-run")

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1200,900"):
            options.add_argument(arg)
        driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
        cls.browser = webdriver.Chrome(service=Service(executable_path=driver_path),
                                       options=options)
        cls.browser.set_page_load_timeout(30)

    @classmethod
    def tearDownClass(cls):
        cls.browser.quit()
        cls.server.terminate()
        cls.server.wait(timeout=30)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.browser.delete_all_cookies()

    # --- helpers -------------------------------------------------------------

    def open(self, path):
        self.browser.get(self.base + path)

    def click(self, element):
        """Clicks a link or button and waits for the next page (the element gone
        from the document; chromedriver may say so with a generic error)."""
        element.click()

        def gone(_):
            try:
                element.is_enabled()
                return False
            except StaleElementReferenceException:
                return True
            except WebDriverException as e:
                if "does not belong to the document" in str(e):
                    return True
                raise

        WebDriverWait(self.browser, 30).until(gone)

    def login(self, token):
        self.open("/login")
        self.browser.find_element(By.NAME, "token").send_keys(token)
        self.click(self.browser.find_element(By.CSS_SELECTOR, "#login button"))

    def rows(self, table_id):
        """The table's body rows as lists of cell texts."""
        return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                for tr in self.browser.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")]

    def row_element(self, table_id, key):
        for tr in self.browser.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr"):
            if tr.find_element(By.TAG_NAME, "td").text.startswith(key):
                return tr
        self.fail(f"no row {key!r} in #{table_id}: {self.rows(table_id)}")

    def http(self, path, token=None, method="GET"):
        request = urllib.request.Request(self.base + path, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    # --- in the browser --------------------------------------------------------

    def test_pages_without_a_token_ask_for_one_and_show_nothing(self):
        for path in ("/", "/checkpoint?name=team/run-1", "/version?name=team/run-1&v=2",
                     "/diff?a=team/run-1@1&b=team/run-1@2"):
            self.open(path)
            self.assertEqual(self.browser.title, "Log in - ckpt")
            self.assertTrue(self.browser.find_element(By.ID, "login").is_displayed())
            self.assertNotIn("run-1", self.browser.page_source.replace(path, ""))
            self.assertNotIn("fc.bias", self.browser.page_source)

    def test_a_wrong_token_is_refused(self):
        self.login("not-a-token-of-this-server")
        self.assertEqual(self.browser.title, "Log in - ckpt")
        self.assertIn("token", self.browser.find_element(By.CSS_SELECTOR, "p.error").text)
        self.open("/")
        self.assertEqual(self.browser.title, "Log in - ckpt")

    def test_checkpoints_versions_sizes_and_a_nan_highlight(self):
        self.login(READER)
        # The list: only what the token may read, and the store's totals.
        self.assertEqual(self.browser.title, "Checkpoints - ckpt")
        names = [r[0] for r in self.rows("checkpoints")]
        self.assertEqual(names, ["team/run-1", "team/run-2"])
        self.assertEqual(self.rows("checkpoints")[0][1], "2")  # versions
        totals = self.browser.find_element(By.ID, "totals").text
        self.assertIn("Versions\n4", totals)
        self.assertIn("Checkpoints\n3", totals)

        # A checkpoint: versions newest first, sizes, tags, dedup.
        self.click(self.browser.find_element(By.LINK_TEXT, "team/run-1"))
        self.assertEqual(self.browser.find_element(By.TAG_NAME, "h1").text, "team/run-1")
        versions = self.rows("versions")
        self.assertEqual([v[0] for v in versions], ["2", "1"])
        self.assertEqual([v[2] for v in versions], ["200", "100"])  # steps
        self.assertEqual(versions[0][4], "latest")
        # 64x32 + 64 + 32 float32 = 8576 B; @2 adds 5 int64 = 8616 B.
        self.assertEqual([v[6] for v in versions], ["8.4 KiB", "8.4 KiB"])
        self.assertEqual(versions[1][7], "8.4 KiB")  # all new in @1
        # @2 shares bn.running_mean (128 B) with @1.
        self.assertEqual(versions[0][8], "128 B (1%)")

        # The NaN version: the tensor at fault is named and its row is red.
        self.click(self.browser.find_element(By.LINK_TEXT, "2"))
        self.assertEqual(self.browser.title, "team/run-1@2 - ckpt")
        summary = self.browser.find_element(By.ID, "nonfinite-summary").text
        self.assertIn("1 tensor holds NaN or infinite values: model/fc.bias", summary)
        bias = self.row_element("tensors", "model/fc.bias")
        self.assertEqual(bias.get_attribute("class"), "nonfinite")
        self.assertEqual(bias.value_of_css_property("background-color"), NONFINITE_BACKGROUND)
        cells = [td.text for td in bias.find_elements(By.TAG_NAME, "td")]
        self.assertEqual(cells[0], "model/fc.bias NaN/Inf")
        self.assertEqual(cells[1], "float32 [64] 256 B cpu")
        self.assertEqual(cells[7:], ["1", "0", "0"])  # NaN, +Inf, -Inf
        weight = self.row_element("tensors", "model/fc.weight")
        self.assertNotEqual(weight.value_of_css_property("background-color"),
                            NONFINITE_BACKGROUND)
        # Markup in a key is shown as text, never run as HTML.
        self.assertEqual(self.row_element("tensors", "model/emb<b>").find_element(
            By.TAG_NAME, "td").text, "model/emb<b>")
        # Only the tensors at fault.
        self.click(self.browser.find_element(By.LINK_TEXT, "show only these"))
        self.assertEqual([r[0] for r in self.rows("tensors")], ["model/fc.bias NaN/Inf"])

    def test_a_diff_row_and_the_lineage(self):
        self.login(READER)
        self.open("/checkpoint?name=team/run-1")
        form = self.browser.find_element(By.ID, "diff-form")
        Select(form.find_element(By.NAME, "a")).select_by_visible_text("1")
        Select(form.find_element(By.NAME, "b")).select_by_visible_text("2")
        self.click(form.find_element(By.TAG_NAME, "button"))
        self.assertEqual(self.browser.find_element(By.TAG_NAME, "h1").text,
                         "team/run-1@1 vs team/run-1@2")
        rows = {r[0]: r for r in self.rows("diff")}
        weight = rows["model/fc.weight"]
        self.assertEqual(weight[1:4], ["changed", "float32 [64, 32]", "float32 [64, 32]"])
        self.assertAlmostEqual(float(weight[4]), 0.1, places=5)  # ||b-a|| / ||a||
        self.assertEqual(rows["model/fc.bias"][6], "1")  # the NaN pair
        self.assertEqual(rows["model/emb<b>"][1], "only in b")
        self.assertNotIn("model/bn.running_mean", rows)  # identical: counted only
        summary = self.browser.find_element(By.ID, "diff-summary").text
        self.assertIn("Identical\n1", summary)
        self.assertIn("Changed\n2", summary)

        self.open("/version?name=team/run-2&v=1")
        lineage = self.browser.find_element(By.ID, "lineage").text.splitlines()
        self.assertEqual(lineage[0], "team/run-2@1 (this version)")
        self.assertTrue(lineage[1].startswith("team/run-1@2 saved "), lineage)
        self.assertTrue(lineage[1].endswith(" step 200"), lineage)
        self.click(self.browser.find_element(By.LINK_TEXT, "diff"))
        self.assertEqual(self.browser.find_element(By.TAG_NAME, "h1").text,
                         "team/run-1@2 vs team/run-2@1")

    def test_names_outside_the_token_are_refused(self):
        self.login(READER)
        self.open("/checkpoint?name=elsewhere/secret-run")
        error = self.browser.find_element(By.ID, "error").text
        self.assertIn("403 PERMISSION_DENIED", error)
        self.assertIn("reader", error)
        self.open("/diff?a=team/run-1@1&b=elsewhere/secret-run@1")
        self.assertIn("403 PERMISSION_DENIED", self.browser.find_element(By.ID, "error").text)
        # The outsider sees its own name only.
        self.browser.delete_all_cookies()
        self.login(OUTSIDER)
        self.assertEqual([r[0] for r in self.rows("checkpoints")], ["elsewhere/secret-run"])

    def test_logout_forgets_the_token(self):
        self.login(READER)
        self.assertEqual(self.browser.title, "Checkpoints - ckpt")
        self.click(self.browser.find_element(By.LINK_TEXT, "log out"))
        self.assertEqual(self.browser.title, "Log in - ckpt")
        self.open("/")
        self.assertEqual(self.browser.title, "Log in - ckpt")

    # --- over plain HTTP -------------------------------------------------------

    def test_status_codes_and_headers(self):
        status, headers, _ = self.http("/")
        self.assertEqual(status, 401)
        self.assertEqual(headers["WWW-Authenticate"], 'Bearer realm="ckpt"')
        status, headers, body = self.http("/", READER)
        self.assertEqual(status, 200)
        self.assertIn("default-src 'none'", headers["Content-Security-Policy"])
        self.assertEqual(headers["Cache-Control"], "no-store")
        self.assertIn("team/run-1", body)
        self.assertEqual(self.http("/", "wrong-token-0123456789")[0], 401)
        self.assertEqual(self.http("/version?name=team/run-1&v=9", READER)[0], 404)
        status, _, body = self.http("/version?name=team/run-1&v=two", READER)
        self.assertEqual(status, 400)
        self.assertIn("parameter v &#39;two&#39; is not a number", body)
        self.assertEqual(self.http("/version?name=bad//name", READER)[0], 400)
        self.assertEqual(self.http("/diff?a=team/run-1@1", READER)[0], 400)
        self.assertEqual(self.http("/no-such-page", READER)[0], 404)
        # HEAD: the headers only.
        status, _, body = self.http("/", READER, method="HEAD")
        self.assertEqual((status, body), (200, ""))

    def test_read_only(self):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, headers, _ = self.http("/checkpoint?name=team/run-1", ADMIN, method=method)
            self.assertEqual(status, 405, method)
            self.assertEqual(headers["Allow"], "GET, HEAD")
        # Nothing changed.
        _, _, body = self.http("/checkpoint?name=team/run-1", ADMIN)
        self.assertEqual(body.count('<tr><td><a href="/version?name=team%2Frun-1&amp;v='), 2)

    def test_off_by_default(self):
        proc, log, _, web_port = start_server(self.tmp, "plain", [])
        try:
            self.assertEqual(web_port, 0)
            self.assertNotIn("web page", log)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--server-bin", required=True)
    parser.add_argument("--cli-bin", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v", *rest])


if __name__ == "__main__":
    main()
