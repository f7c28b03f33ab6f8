"""The one compute thread (edgekit._compute): results, exceptions, Ctrl-C while waiting, calls from the thread
itself, several callers at once, fork. No model: fast."""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

from edgekit import _compute


def test_a_call_runs_on_the_compute_thread_and_returns_its_result():
    where = _compute.run(threading.get_ident)
    assert where != threading.get_ident() and _compute.run(_compute.is_compute_thread)
    assert _compute.run(lambda a, b: a + b, 2, 3) == 5
    assert _compute.last_seconds() >= 0.0


def test_its_exception_is_raised_in_the_caller_and_the_thread_serves_on():
    with pytest.raises(ZeroDivisionError):
        _compute.run(lambda: 1 / 0)
    assert _compute.run(lambda: "still here") == "still here"


def test_a_call_from_the_compute_thread_runs_inline():
    def outer():
        return _compute.run(threading.get_ident) == threading.get_ident()  # would deadlock if queued

    assert _compute.run(outer) is True


def test_callers_on_many_threads_each_get_their_own_result():
    results: dict[int, list[int]] = {}

    def caller(i: int) -> None:
        results[i] = [_compute.run(lambda x: x * x, i * 100 + k) for k in range(50)]

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: [(i * 100 + k) ** 2 for k in range(50)] for i in range(4)}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_while_waiting_is_raised_only_after_the_call_has_finished():
    """The call still uses the caller's buffers: the caller must not unwind before it ends."""
    assert threading.current_thread() is threading.main_thread()
    started, got_signal, release = threading.Event(), threading.Event(), threading.Event()
    finished: list[bool] = []

    def call() -> None:
        started.set()
        release.wait()
        finished.append(True)

    def on_sigint(_signum, _frame):
        got_signal.set()
        raise KeyboardInterrupt

    def interrupter() -> None:
        started.wait()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        # The main thread takes the signal while it waits, and only then may the call end. A signal that
        # lands just before the wait begins is handled only once the wait is over; the bound keeps that
        # case from deadlocking the test, and the asserts below hold either way.
        got_signal.wait(timeout=30)
        release.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    helper = threading.Thread(target=interrupter)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            _compute.run(call)
        assert finished == [True]
    finally:
        helper.join()
        signal.signal(signal.SIGINT, previous)
    assert _compute.run(lambda: 7) == 7  # and the next call works


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_compute_thread():
    _compute.run(threading.get_ident)  # the parent's compute thread exists
    pid = os.fork()
    if pid == 0:  # the child: the parent's compute thread doesn't exist here; a hang dies by the alarm
        try:
            signal.alarm(60)
            ok = _compute.run(threading.get_ident) != threading.get_ident() and _compute.calls() == 1
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
