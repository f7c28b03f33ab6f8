"""One process-wide compute thread that runs every llama.cpp graph evaluation edgekit makes.

Why (docs/architecture.md has the measurements): the llama.cpp that pip builds computes with
OpenMP (libgomp), which gives every OS thread that starts a parallel region a thread pool of its
own and stops spinning at its barriers once the pools' threads outnumber the CPUs. With each
model decoding on its own engine thread, a second model that had decoded once made every barrier
of every other model sleep on a futex. Running every ``llama_decode`` on this one thread keeps one
pool (one OpenMP team) in the process however many models, drafts or studies decode, so the
models share the cores like one runtime: their batches take turns instead of competing.

:func:`run` hands a call over and waits for it. A model's engine hands over a run of whole steps
(decode, sample, hand out the tokens) and its decodes then run inline; it ends the run when
:func:`pending` says another caller waits, so models take turns step by step. The handoff is a queue put and a lock the caller
blocks on (both C-implemented in CPython; tens of microseconds, against milliseconds per decode;
``python -m edgekit.bench.studies.many_models --handoff`` measures it). Details:

- the call's exception is raised in the caller;
- a KeyboardInterrupt (or any exception) raised in the waiting caller is held until the call has
  finished, then raised: the call is still using the caller's batch and context, which the caller
  may free as the exception unwinds (a ``llama_decode`` made directly can't be interrupted either);
- a call made from the compute thread itself runs inline (no deadlock);
- the thread is a daemon started on first use; while the interpreter finalizes (when a daemon
  thread can no longer run), calls run inline on the caller's thread;
- after ``fork()`` the child starts a compute thread of its own on first use (the parent's doesn't
  exist in the child). That new thread also gets a fresh OpenMP pool: libgomp's pool of a thread
  that existed before the fork is stale in the child.

No OpenMP setting is changed: ``OMP_*`` variables that numpy or torch also read stay as the user set
them.
"""

from __future__ import annotations

import _thread
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Job:
    __slots__ = ("fn", "args", "result", "error", "done", "seconds", "finished")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Any) -> None:
        self.fn = fn
        self.args = args
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = done  # a held lock the compute thread releases when the call has returned
        self.seconds = 0.0
        self.finished = False  # set before ``done`` is released


class _Worker:
    """The compute thread and its job queue (one per process; a child after fork makes its own)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.ident: int | None = None
        self.lock = threading.Lock()
        self.calls = 0  # calls run on the compute thread (for tests and studies)

    def ensure(self) -> bool:
        """Start the thread if needed; False if it can't be started (Python refuses new threads at exit)."""
        if self.thread is not None:
            return True
        with self.lock:
            if self.thread is None:
                thread = threading.Thread(target=self._loop, name="edgekit-compute", daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # "can't create new thread at interpreter shutdown"
                    return False
                self.ident = thread.ident
                self.thread = thread
        return True

    def _loop(self) -> None:
        jobs, clock = self.jobs, time.perf_counter
        while True:
            job = jobs.get()
            t0 = clock()
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:  # goes to the caller; the thread serves on
                job.error = exc
            job.seconds = clock() - t0
            self.calls += 1
            job.finished = True
            job.done.release()


_worker = _Worker()
_local = threading.local()  # per caller thread: its reusable wait lock, and its last call's duration


def _reset_after_fork() -> None:
    global _worker, _local
    _worker = _Worker()
    _local = threading.local()


os.register_at_fork(after_in_child=_reset_after_fork)


def run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the compute thread; its result, or its exception raised here.

    Inline when called from the compute thread itself or while the interpreter finalizes.
    :func:`last_seconds` then tells how long the call itself took (without the wait for its turn).
    """
    worker = _worker
    # While the interpreter finalizes, the daemon compute thread may never run again: run inline.
    if threading.get_ident() == worker.ident or sys.is_finalizing() or not worker.ensure():
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            _local.seconds = time.perf_counter() - t0
    done = getattr(_local, "lock", None)
    if done is None:
        done = _local.lock = _thread.allocate_lock()
    done.acquire()
    job = _Job(fn, args, done)
    worker.jobs.put(job)
    pending: BaseException | None = None
    while True:
        try:
            done.acquire()  # released by the compute thread when the call returns
            break
        except BaseException as exc:  # Ctrl-C while waiting: the call still uses our batch; wait it out
            if pending is None:
                pending = exc
            if job.finished:
                # The signal may have landed just after the acquire returned: the lock is then ours already
                # (acquiring it again would wait forever); otherwise it is free now. Either way, take it.
                done.acquire(blocking=False)
                break
    done.release()  # ready for this thread's next call
    _local.seconds = job.seconds
    if pending is not None:
        raise pending
    if job.error is not None:
        raise job.error
    return job.result


def last_seconds() -> float:
    """How long this thread's last :func:`run` call took on the compute thread (0.0 before any)."""
    return getattr(_local, "seconds", 0.0)


def calls() -> int:
    """How many calls the compute thread has run in this process (inline calls not counted)."""
    return _worker.calls


def pending() -> bool:
    """Whether calls are queued for the compute thread (a long call may end early to let them run)."""
    return not _worker.jobs.empty()


def is_compute_thread() -> bool:
    """Whether the calling thread is the compute thread."""
    return threading.get_ident() == _worker.ident
