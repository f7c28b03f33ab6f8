"""Send a real SIGINT to a child process once it says it is ready (a file it writes), not after a sleep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def interrupt_when_ready(script: str, model: Path, tmp_path: Path, *, timeout: float = 120,
                         waiting_for: str = "the child never got ready",
                         extra_args: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -c script READY SENT MODEL [EXTRA_ARGS...]``; when READY exists, SIGINT it and write SENT."""
    ready, sent = tmp_path / "ready", tmp_path / "sent"
    child = subprocess.Popen([sys.executable, "-c", script, str(ready), str(sent), str(model), *(extra_args or [])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "NO_COLOR": "1"})
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, waiting_for
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
        sent.write_text("sent")
        out, err = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)
