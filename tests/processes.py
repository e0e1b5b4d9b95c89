"""A gameplane process under test: started, waited for until an HTTP probe
answers, logged to a file, stopped or killed."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import httpx


class ServiceProcess:
    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self, cmd: list[str], probe_url: str, ok: tuple[int, ...], timeout: float,
               env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[3:5]} exited: {self.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(probe_url, timeout=1).status_code in ok:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{cmd[3:5]} did not come up: {self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, grace: float = 15) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.sigkill()
