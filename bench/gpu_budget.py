"""What the GPU check's scripts (bench/gpu_check.py, gpu_base.py, gpu_fit.py) share to never lose a run: a time budget
that also stops the measurement in flight, the dry run's injected failures, the one-line text of an error, and child
processes bounded by a hard deadline. Imports nothing heavy (torch only when an injected failure is raised)."""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

INJECT_ENV = "KSLM_GPU_CHECK_INJECT"  # comma-separated measurement kinds that raise an out-of-memory error once


class BudgetExceeded(BaseException):
    """Raised by the alarm inside the measurement in flight when the budget ends: a BaseException (as
    KeyboardInterrupt), so that no library's `except Exception` (torch.compile's fallbacks, say) swallows it."""


def _alarm(signum, frame):
    raise BudgetExceeded("the time budget ended during this measurement")


class Budget:
    """`seconds` from now (or from `start`, a time.perf_counter() value). A measurement starts only when the time left
    covers what the previous one of its kind took (× a factor), or `floor` seconds for a kind not seen yet; it runs
    under an alarm at the deadline (SIGALRM: main thread only), so none outlives the budget by more than the time
    Python takes to reach its next bytecode."""

    def __init__(self, seconds: float, start: float = None, floor: dict = None):
        self.start = time.perf_counter() if start is None else start
        self.deadline = self.start + seconds
        self.costs = {}  # kind → seconds its latest measurement took
        self.floor = floor or {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def refuses(self, kind: str, factor: float = 1.0):
        """None when a measurement of `kind` may start, else the reason it may not ("skipped: budget (…)")."""
        need, left = self.costs.get(kind, self.floor.get(kind, 0.0)) * factor, self.left()
        if left <= 0 or left < need:
            return f"skipped: budget ({max(left, 0):.0f} s left" + (f", ≈ {need:.0f} s needed)" if need >= 1 else ")")
        return None

    @contextmanager
    def bounded(self, kind: str):
        """Run the body under an alarm at the deadline; record how long it took as `kind`'s cost."""
        left, t0 = self.left(), time.perf_counter()
        if left <= 0:
            raise BudgetExceeded("no time left")
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, left)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            self.costs[kind] = time.perf_counter() - t0


class Injector:
    """The dry run's failures: each kind named in `names` (or in $KSLM_GPU_CHECK_INJECT) raises an out-of-memory error
    at its first measurement in this process; the later ones of that kind run."""

    def __init__(self, names=None):
        given = names if names is not None else os.environ.get(INJECT_ENV, "")
        self.pending = {n.strip() for n in (given.split(",") if isinstance(given, str) else given) if n.strip()}

    def __call__(self, kind: str):
        if kind in self.pending:
            self.pending.discard(kind)
            raise out_of_memory(f"injected by the GPU check's dry run into {kind}")


def out_of_memory(message: str) -> Exception:
    """torch.cuda.OutOfMemoryError (raisable on a CPU build too), or a RuntimeError worded as CUDA's without torch."""
    try:
        import torch

        return torch.cuda.OutOfMemoryError(f"CUDA out of memory ({message})")
    except (ImportError, AttributeError):
        return RuntimeError(f"CUDA out of memory ({message})")


def error_text(exc: BaseException) -> str:
    """`Type: first line of the message` (200 characters at most)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def run_bounded(cmd, deadline: float, *, grace: float = 10.0, term_first: bool = False, own_group: bool = True,
                **popen) -> dict:
    """Run `cmd` until it exits or `deadline` (perf_counter) passes; then SIGTERM when `term_first` (kslm fit stops at
    the next batch boundary: no checkpoint write cut short) and SIGKILL `grace` seconds later. With `own_group` the
    child leads a process group of its own, and SIGKILL goes to the whole group (compile workers, data loader
    workers); without, it stays in this process's group, so that whoever kills this group kills it too (gpu_fit.py's
    kslm fit: the check kills gpu_fit.py's group at its hard limit), and its workers end with it (torch's data loader
    and compile workers watch their parent). → {"rc", "wall_s", "killed"}."""
    t0 = time.perf_counter()
    if own_group:  # a group of its own in this session (setpgid, not setsid: whoever ends the session ends it too)
        popen.update({"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp})
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **popen)

    def kill():
        try:
            if own_group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except (ProcessLookupError, PermissionError):
            pass

    killed = None
    try:
        rc = proc.wait(timeout=max(0.1, deadline - time.perf_counter()))
    except subprocess.TimeoutExpired:
        killed, rc = "deadline", None
        if term_first:
            proc.terminate()
            try:
                rc = proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if rc is None:
            killed = "deadline (SIGKILL)"
            kill()
            rc = proc.wait()
    finally:
        if proc.poll() is None:  # an exception here (KeyboardInterrupt): leave nothing running
            kill()
            proc.wait()
    if own_group:
        kill()  # workers the child left behind (its group outlives it)
    return {"rc": rc, "wall_s": time.perf_counter() - t0, "killed": killed}


__all__ = ["INJECT_ENV", "BudgetExceeded", "Budget", "Injector", "out_of_memory", "error_text", "run_bounded"]
