"""Ctrl-C while a model loads: the load is cancelled through llama.cpp's progress callback.

Each test runs a child process and sends it a real SIGINT. The readiness signal is the
load's own progress callback: on its first "load" report the child writes a file and
waits (bounded) until the parent says the signal was sent, so the SIGINT always lands
inside llama.cpp's load, in the middle of a ctypes callback, where it used to be lost.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from interrupting import interrupt_when_ready

# Wraps edgekit.load so its progress callback reports readiness, then waits for the parent.
_READY_SHIM = """
import pathlib, sys, time
import edgekit
from edgekit.runtime.load import load as real_load

ready, sent = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

def load(*args, progress=None, **kwargs):
    def relay(stage, done, total):
        if stage == "load" and not ready.exists():
            ready.write_text("loading")
            deadline = time.monotonic() + 60
            while not sent.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        if progress is not None:
            progress(stage, done, total)
    return real_load(*args, progress=relay, **kwargs)

edgekit.load = load
"""

_LIBRARY = _READY_SHIM + """
import signal
from edgekit import _llama

try:
    edgekit.load(sys.argv[3], n_ctx=256, mmap=False)
    print("LOADED")
except KeyboardInterrupt:
    print("INTERRUPTED", _llama.log_tail(1, contains="cancelled"))
print("HANDLER RESTORED", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
with real_load(sys.argv[3], n_ctx=256) as m:
    print("LOADS AGAIN", m.generate("Hi", max_tokens=2, temperature=0).stats.gen_tokens)
"""

_CLI = _READY_SHIM + """
from edgekit.cli import main

main(["chat", sys.argv[3], "--prompt", "Hi", "--max-tokens", "4", "--ctx", "256"])
"""


def _interrupt_during_load(script: str, model: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return interrupt_when_ready(script, model, tmp_path, waiting_for="the load never reported progress")


@pytest.mark.slow
def test_ctrl_c_during_load_cancels_it_and_raises_keyboard_interrupt(smollm2_gguf, tmp_path):
    done = _interrupt_during_load(_LIBRARY, smollm2_gguf, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("INTERRUPTED") and "cancelled model load" in lines[0]  # llama.cpp's own log line
    assert "HANDLER RESTORED True" in lines
    assert "LOADS AGAIN 2" in lines


@pytest.mark.slow
def test_ctrl_c_while_the_cli_loads_exits_130_without_a_traceback(smollm2_gguf, tmp_path):
    done = _interrupt_during_load(_CLI, smollm2_gguf, tmp_path)
    assert done.returncode == 130, (done.stdout, done.stderr)
    assert "Interrupted" in done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""  # no answer: the model never finished loading
