"""Ctrl-C and SIGTERM during `kslm fit`'s training loop keep the work: the step in progress finishes, kslm's checkpoint
callback (kslm.cli.callbacks.KslmCheckpoint) saves a resumable last.ckpt (atomically, as every checkpoint) and points
`checkpoints/NAME/last.ckpt` at it, and the run ends with `kslm: interrupted at step N — resume with --ckpt_path …`,
exit code 130 (SIGINT) or 143 (SIGTERM). A signal that arrives during a validation of the fit lets it finish and
stops at its end (a checkpoint there is one Lightning writes at every validation).

Outside the training loop (reading and tokenizing data, validate / test / predict) Ctrl-C stops at once
(`kslm: interrupted`, 130): there is no training state to keep. A second Ctrl-C (or SIGTERM) during the loop stops at
once too. On several ranks the request is all-reduced at every step, so all ranks save the same step.
"""

import os
import signal
import sys
import threading

_STATE = {"signum": 0, "previous": None}


class Interrupted(BaseException):
    """A fit stopped by a signal after saving its checkpoint (not an Exception: no `except Exception` swallows it).
    str(): the line kslm prints; `code`: the exit code (128 + the signal's number)."""

    def __init__(self, signum: int, step: int, ckpt: str, rank: int = 0):
        self.signum, self.step, self.ckpt, self.rank = signum, step, ckpt, rank
        self.code = 128 + signum
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        super().__init__(f"{what} at step {step} — resume with --ckpt_path {ckpt}")


def _on_signal(signum, frame):
    if _STATE["signum"]:  # the second one: stop at once
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        from kslm.io import Terminated

        raise Terminated(128 + signum)
    _STATE["signum"] = signum
    what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    if all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK")):  # (every rank gets it)
        print(f"kslm: {what}: stopping after this step and saving a checkpoint (Ctrl-C again stops at once)",
              file=sys.stderr, flush=True)


def arm() -> None:
    """From now on (fit's training loop) SIGINT and SIGTERM ask for a stop at the next step boundary (main thread
    only; the handlers before are put back by `disarm`)."""
    if threading.current_thread() is not threading.main_thread() or _STATE["previous"] is not None:
        return
    _STATE["signum"] = 0
    _STATE["previous"] = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in _STATE["previous"]:
        signal.signal(s, _on_signal)


def disarm() -> None:
    previous, _STATE["previous"] = _STATE["previous"], None
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    for s, handler in previous.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def requested(trainer) -> int:
    """The signal that asked the fit to stop (0: none), the same on every rank (a MAX all-reduce when there are
    several: they must all save the same step). Lightning's own SIGTERM flag counts too."""
    signum = _STATE["signum"] or (int(signal.SIGTERM) if getattr(trainer, "received_sigterm", False) else 0)
    if trainer.world_size > 1:
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([signum], device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
    return signum


__all__ = ["Interrupted", "arm", "disarm", "requested"]
