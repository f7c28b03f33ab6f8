"""Run ``edgekit serve`` in a subprocess for the server tests: wait for its ready line, stop it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

READY = re.compile(r"ready at (http://\S+)/v1 ")
START_TIMEOUT_S = 120  # loading SmolLM2 takes a second; a loaded CI machine may take far longer
API_KEY = "test-key-123"


class ServerProcess:
    """``edgekit serve MODEL --port 0 ARGS``; ``url`` is known once the ready line is printed."""

    def __init__(self, model: Path | str, *args: str, home: Path) -> None:
        env = {**os.environ, "EDGEKIT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", str(model), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self, pipe, lines: list[str]) -> None:
        for line in pipe:
            lines.append(line)
            m = READY.search(line)
            if m:
                self.url = m.group(1)
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting

    def wait_ready(self) -> ServerProcess:
        if not self._ready.wait(START_TIMEOUT_S) or not self.url:
            self.kill()
            raise AssertionError(f"edgekit serve did not get ready:\n{self.output()}")
        return self

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` (None: send nothing) and wait for the exit code (the output readers finish too)."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"edgekit serve did not exit after signal {sig}:\n{self.output()}") from None
        for t in self._readers:
            t.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
