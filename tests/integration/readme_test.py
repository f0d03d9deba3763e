#!/usr/bin/env python3
"""README.md runs top to bottom: every ```sh / ```bash and ```python block, in
order, against a fresh ckpt-server (documentation that is tested cannot go
stale).

Conventions (also stated in a comment at the top of the README's CLI section):
  - Blocks fenced ```sh, ```bash or ```python run; other fences (```cpp,
    ```cmake, plain ``` for file contents and log lines) never do. The
    ```cpp blocks are compiled by every build instead (readme_snippets.py,
    with "<!-- readme-test: cpp-context DECLARATIONS -->" for the names a
    fragment uses).
  - A line "<!-- readme-test: skip REASON -->" right above a fence skips that
    block (installs, builds, containers, other machines, or a block another
    test runs); the REASON is required.
  - "<!-- readme-test: tokens-file -->" above a block marks the example tokens
    file; "<!-- readme-test: with-tokens -->" above a block runs it against the
    same store served with that tokens file (the server is restarted on the
    same port with --tokens-file, then again without).

How blocks run: in one scratch directory (cwd) where `build` is the build tree
and the repository's top-level entries are linked in; HOME is a scratch
directory too. Shell blocks run under bash with `set -e -o pipefail`, and the
variables a block exports carry over to later blocks (and to Python blocks'
environment). `localhost:50051` and `localhost:9464` in a block become the
test server's addresses. The server is started fresh on 127.0.0.1:0 with
`--backup-dir` (for the backup section). ckpt, ckpt-server and grpcurl are on
PATH; python3 is the one on PATH (with torch and the ckpt package).

A failing block fails the test, printing the block's index, its README line,
the failing command and the output. Expected lines checked here are listed in
EXPECTED below.

Usage: readme_test.py --readme README.md --build-dir BUILD --server-bin BIN
                      --cli-bin BIN
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN_LANGS = {"sh": "sh", "bash": "sh", "python": "python"}
MARKER = re.compile(r"^<!--\s*readme-test:\s*(skip|tokens-file|with-tokens)\b\s*(.*?)\s*-->\s*$")

# Lines (substrings) the whole run's output must contain: what a reader is
# told to expect, where it is easy to state.
EXPECTED = [
    "saved team/run-1/tokenizer@1",
    "wrote restored.json",
    "imported model.pt as team/run-1/model@3 (pt, 2 tensors",
    "tagged team/run-1/model@3 as release",
    "deleted team/run-1/model@1 (",
    "deleted team/run-1/tokenizer versions: 1 (",
    "retention of team/run-1/model: keep_last=1 keep_best=1 metric=loss (lower is better)",
    "would delete team/run-1/model versions: none",
    "retention deleted team/run-1/model versions: 3",
    "SERVING",
    "5 ['weight', 'bias']",
    "'model/w' (1 NaN of 4) (the save asked to reject non-finite values); nothing was saved",
    "1.0 1.0 0",
    "0 identical, 1 changed, 0 dtype/shape changed, 0 only in a, 1 only in b",
    "model/w  changed    1       2             float32[4]",
    "team/run-1/nan-demo@2  step 0  ",
    "grpc.health.v1.Health",
    '"status": "SERVING"',
]


class Block:
    def __init__(self, index: int, line: int, lang: str, text: str, marker: str, reason: str):
        self.index, self.line, self.lang, self.text = index, line, lang, text
        self.marker, self.reason = marker, reason


def parse_blocks(readme: str) -> list[Block]:
    lines = readme.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang = m.group(1)
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            sys.exit(f"README line {start + 1}: unterminated code block")
        marker, reason = "", ""
        if start > 0:
            mm = MARKER.match(lines[start - 1])
            if mm:
                marker, reason = mm.group(1), mm.group(2)
                if marker == "skip" and not reason:
                    sys.exit(f"README line {start}: 'readme-test: skip' needs a reason")
        blocks.append(Block(len(blocks), start + 1, lang, "\n".join(lines[start + 1:j]) + "\n",
                            marker, reason))
        i = j + 1
    return blocks


class Server:
    """ckpt-server on a data directory; port 0 the first time, then the same port."""

    def __init__(self, binary: str, data_dir: str, log_path: str, backup_dir: str):
        self.binary, self.data_dir, self.log_path = binary, data_dir, log_path
        self.backup_dir = backup_dir
        self.port = 0
        self.metrics_port = 0
        self.proc = None

    def start(self, extra: list[str]) -> None:
        with open(self.log_path, "a") as log:
            log.write(f"--- starting with {extra}\n")
        offset = os.path.getsize(self.log_path)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir,
             "--metrics-listen", f"127.0.0.1:{self.metrics_port}", "--backup-dir",
             self.backup_dir, "--shutdown-grace", "5", "--log-level", "warn", *extra],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            text = Path(self.log_path).read_text(errors="replace")[offset:]
            m = re.search(r"listening on port ([0-9]+)", text)
            if m:
                self.port = int(m.group(1))
                mm = re.search(r"metrics on port ([0-9]+)", text)
                self.metrics_port = int(mm.group(1)) if mm else 0
                return
            if self.proc.poll() is not None:
                sys.exit(f"ckpt-server exited at start:\n{text}")
            if time.monotonic() > deadline:
                self.stop()
                sys.exit(f"ckpt-server did not report its port in 30 s:\n{text}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", required=True)
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--cli-bin", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()

    readme_path = Path(args.readme).resolve()
    blocks = parse_blocks(readme_path.read_text())
    tokens_blocks = [b for b in blocks if b.marker == "tokens-file"]
    if len(tokens_blocks) > 1:
        sys.exit("more than one 'readme-test: tokens-file' block")

    tmp = Path(tempfile.mkdtemp(prefix="ckpt-readme-"))
    work, home = tmp / "work", tmp / "home"
    work.mkdir()
    home.mkdir()
    # The repository's entries (scripts/, deploy/, examples/, ...) and the
    # build tree as build/.
    for entry in readme_path.parent.iterdir():
        if entry.name.startswith(".") or entry.name.startswith("build"):
            continue
        os.symlink(entry, work / entry.name)
    os.symlink(Path(args.build_dir).resolve(), work / "build")
    bindir = tmp / "bin"
    bindir.mkdir()
    os.symlink(Path(args.cli_bin).resolve(), bindir / "ckpt")
    os.symlink(Path(args.server_bin).resolve(), bindir / "ckpt-server")

    tokens_file = tmp / "ckpt-tokens"
    if tokens_blocks:
        tokens_file.write_text(tokens_blocks[0].text)

    (tmp / "backups").mkdir()
    server = Server(args.server_bin, str(tmp / "data"), str(tmp / "server.log"),
                    str(tmp / "backups"))
    server.start([])
    state = tmp / "state.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_")}
    env.update(HOME=str(home), PATH=f"{bindir}:{env.get('PATH', '')}",
               PYTHONDONTWRITEBYTECODE="1")
    state.write_text("")
    output = []
    ran = skipped = 0
    failed = None
    try:
        for b in blocks:
            if b.lang not in RUN_LANGS or b.marker in ("skip", "tokens-file"):
                if b.lang in RUN_LANGS:
                    skipped += 1
                continue
            with_tokens = b.marker == "with-tokens"
            if with_tokens:
                if not tokens_blocks:
                    sys.exit(f"block {b.index} (README line {b.line}) is marked with-tokens "
                             "but no block is marked tokens-file")
                server.stop()
                server.start(["--tokens-file", str(tokens_file)])
            text = (b.text.replace("localhost:50051", f"127.0.0.1:{server.port}")
                    .replace("localhost:9464", f"127.0.0.1:{server.metrics_port}"))
            if RUN_LANGS[b.lang] == "sh":
                header = ("set -e -o pipefail\n"
                          f"source {state}\n"
                          "trap 'rc=$?; echo \"readme-test: exit $rc at block line "
                          "$((LINENO - 4)): $BASH_COMMAND\" >&2' ERR\n"
                          "cd \"$README_TEST_WORK\"\n")
                script = tmp / f"block{b.index}.sh"
                script.write_text(header + text + f"export -p > {state}\n")
                argv = ["bash", str(script)]
            else:
                script = tmp / f"block{b.index}.py"
                script.write_text(text)
                argv = ["bash", "-c", f'source {state} && cd "$README_TEST_WORK" && '
                        f'exec python3 {script}']
            run = subprocess.run(argv, cwd=work, env=dict(env, README_TEST_WORK=str(work)),
                                 capture_output=True, text=True, timeout=240)
            ran += 1
            output.append(run.stdout + run.stderr)
            if with_tokens:
                server.stop()
                server.start([])
            if run.returncode != 0:
                failed = (b, run)
                break
    finally:
        server.stop()

    if failed is not None:
        b, run = failed
        print(f"FAIL: README block {b.index} (```{b.lang} at README line {b.line}) exited "
              f"{run.returncode}\n--- block ---\n{b.text}--- stdout ---\n{run.stdout}"
              f"--- stderr ---\n{run.stderr}--- server log ---\n"
              f"{Path(server.log_path).read_text(errors='replace')[-4000:]}")
        print(f"(scratch directory kept: {tmp})")
        return 1
    everything = "\n".join(output)
    missing = [e for e in EXPECTED if e not in everything]
    if missing:
        print("FAIL: the README's blocks ran but their output lacks:\n  " +
              "\n  ".join(missing) + "\n--- output ---\n" + everything)
        print(f"(scratch directory kept: {tmp})")
        return 1
    print(f"OK: {ran} README blocks ran in order ({skipped} marked skip)")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
