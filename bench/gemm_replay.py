"""The matrix products of one training step, replayed on their own: the matmul rate that step's own GEMMs reach.

bench/throughput.py's "measured peak" is the best repeat of a few GEMM shapes, the largest over shapes and over two
probes minutes apart. On a shared virtual machine whose speed drifts by ±20 % within minutes, a maximum of noisy
samples sits above what the model's steps can reach at any other moment. This module measures the matmul rate
paired with each timed step instead: `record_gemms` runs one step under torch.profiler and lists every aten::mm /
addmm / bmm with its operand shapes (dense layers forward, both backward products, the logits; SDPA's internal
products are not GEMM calls and are not replayed); `GemmReplay.run()` then performs exactly those products (fresh
random operands allocated once and contiguous, where the step passes some as transposed views; fresh outputs each
call, as in the step) and returns their FLOPs and seconds, so
the step's achieved FLOP/s can be divided by the rate its own matmuls reach a moment later.
"""

import time

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def record_gemms(step, device_type: str = "cpu") -> list:
    """[(op, shape_a, shape_b)] of every GEMM call in one call of `step()` (in call order)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        step()
    calls = []
    for e in prof.events():
        if e.name not in GEMM_OPS or not e.input_shapes:
            continue
        shapes = [tuple(s) for s in e.input_shapes if s]
        a, b = shapes[-2:]  # addmm(bias, a, b): the last two are the product's operands
        calls.append((e.name, a, b))
    return calls


def gemm_flops(a, b) -> float:
    """2·M·K·N (times the batch for bmm)."""
    batch = a[0] if len(a) == 3 else 1
    return 2.0 * batch * a[-2] * a[-1] * b[-1]


class GemmReplay:
    def __init__(self, calls: list, device, dtype):
        import torch

        self.torch, self.device = torch, device
        gen = torch.Generator().manual_seed(1)
        operands = {}
        for _, a, b in calls:
            for s in (a, b):
                if s not in operands:
                    operands[s] = torch.randn(s, generator=gen).to(device, dtype)
        self.calls = [(torch.bmm if len(a) == 3 else torch.mm, operands[a], operands[b]) for _, a, b in calls]
        self.flops = sum(gemm_flops(a, b) for _, a, b in calls)

    def run(self) -> float:
        """Seconds for all the step's GEMMs, once."""
        sync = self.torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for fn, a, b in self.calls:
            fn(a, b)
        sync()
        return time.perf_counter() - t0


RESULT = "gemm_replay.json"


def markdown(results: dict) -> str:
    cfg = results["config"]
    rows = [f"d {cfg['d']}, T {cfg['seq']}, batch {cfg['batch']}, {cfg['reps']} alternating replays "
            f"({results['started_utc']})", "", "| model | GEMM calls per step | GFLOP per step | median s | GFLOP/s |",
            "|---|---:|---:|---:|---:|"]
    for name, r in results["models"].items():
        rows.append(f"| {name} | {r['calls']} | {r['gflop']:.2f} | {r['median_s']:.4f} | {r['gflops']:.2f} |")
    return "\n".join(rows)


def main(argv=None):
    """Replay the GEMMs of several models' training steps alternately in one process: do their own matrix products
    run at the same rate? (bench/README.md, issue 16's CPU targets.)"""
    import argparse
    import sys
    from datetime import datetime, timezone
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from machine import print_tables, table_flag

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    for flag, default in (("--d", 256), ("--heads", 4), ("--layers", 4), ("--seq", 256), ("--batch", 4), ("--vocab", 8000),
                          ("--reps", 15)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--models", default="kslm-transformer,llama-equal-params")
    ap.add_argument("--out", default=str(here / "results" / RESULT))
    table_flag(ap, [ap.get_default("out")])
    args = ap.parse_args(argv)
    if args.table is not None:
        return print_tables(args.table, [args.out], markdown)
    import statistics

    import torch
    from throughput_models import build
    from torch.nn import functional as F

    from kslm.io import write_json

    args.d_ff, args.gau_attention = 4 * args.d, "softmax"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    replays = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, forward, *_ = build(name, args)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = torch.randint(args.vocab, (2, args.batch, args.seq))

        def step(model=model, forward=forward, opt=opt, x=x, y=y):
            F.cross_entropy(forward(x).float().flatten(0, 1), y.flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        replays[name] = GemmReplay(record_gemms(step), torch.device("cpu"), torch.float32)
    times = {name: [] for name in replays}
    for _ in range(args.reps):
        for name, replay in replays.items():
            times[name].append(replay.run())
    results = {"started_utc": started, "command": " ".join(["python", *sys.argv]),
               "config": {k: getattr(args, k) for k in ("d", "heads", "layers", "seq", "batch", "vocab", "reps")},
               "models": {}}
    for name, replay in replays.items():
        med = statistics.median(times[name])
        results["models"][name] = {"calls": len(replay.calls), "gflop": replay.flops / 1e9, "median_s": med,
                                   "gflops": replay.flops / med / 1e9, "replay_s": times[name]}
    write_json(args.out, results)
    print(markdown(results))


__all__ = ["record_gemms", "GemmReplay", "gemm_flops"]

if __name__ == "__main__":
    main()
