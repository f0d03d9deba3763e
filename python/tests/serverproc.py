"""Runs the real ckpt-server binary on 127.0.0.1 with a port the kernel picks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[2]


def server_binary() -> str:
    return os.environ.get("CKPT_SERVER_BIN") or str(ROOT / "build" / "server" / "ckpt-server")


def cli_binary() -> str:
    return os.environ.get("CKPT_CLI_BIN") or str(ROOT / "build" / "cli" / "ckpt")


class ServerProcess:
    """``ckpt-server --listen 127.0.0.1:0`` on a fresh data directory; ``port`` is
    what it printed. Stop with :meth:`stop` (SIGTERM) or :meth:`kill`."""

    def __init__(self, extra_flags: Optional[List[str]] = None,
                 data_dir: Optional[str] = None) -> None:
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ckpt-pytest-")
            data_dir = os.path.join(self._tmp.name, "data")
        self.data_dir = data_dir
        self.log_path = data_dir + ".server.log"
        binary = server_binary()
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"ckpt-server binary not found at {binary}: build it "
                               "(scripts/build.sh) or set CKPT_SERVER_BIN")
        args = [binary, "--listen", "127.0.0.1:0", "--data-dir", data_dir,
                "--metrics-listen", "127.0.0.1:0", "--shutdown-grace", "5",
                "--log-level", "warn", *(extra_flags or [])]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            text = Path(self.log_path).read_text(errors="replace")
            m = re.search(r"listening on port ([0-9]+)", text)
            if m:
                self.port = int(m.group(1))
                mm = re.search(r"metrics on port ([0-9]+)", text)
                self.metrics_port = int(mm.group(1)) if mm else 0
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"ckpt-server exited early:\n{text}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ckpt-server did not report its port in 30 s:\n{text}")
            time.sleep(0.02)
        self.address = f"127.0.0.1:{self.port}"

    def metric(self, name: str, labels: str = "") -> float:
        """A value from the server's Prometheus endpoint (0 if absent)."""
        import urllib.request
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (not labels or labels in line):
                rest = line[len(name):]
                if rest[:1] in ("{", " "):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        self.stop()
        self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
