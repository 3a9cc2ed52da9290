"""Parallel (Newton/DEER over a log-depth scan) vs sequential non-linear RNN: wall time for T = 256 … 16,384.

For each length T, cell (tanh: x_t = tanh(λ⊙x_{t−1} + u_t); gru: the post's GRU, diagonal recurrent weights) and
pass (forward only; forward + backward of a sum of the states), times

    sequential  kslm.nn.rnn.sequential_rnn — the Python loop over t, one [B, D] step at a time (autograd for bwd)
    parallel    kslm.nn.rnn.parallel_rnn — Newton to tolerance (atol 1e-5, rtol 1e-4), implicit gradient

on the same random input (λ ~ U[0.5, 0.95], u ~ N(0, 0.5²); GRU: u_z, u_r, u_h ~ U[−1, 1], inputs ~ N(0, 1)) and
reports the median of `--repeats` runs after one warm-up, the Newton iteration count and the max |parallel −
sequential|. fp32. Threads default to 1: the development machine's 2 cores are shared, and with 2 threads every small
op pays a thread-pool handoff (≈ 5 ms instead of 50 µs), which would measure contention rather than the algorithm.

    PYTHONPATH=. python bench/rnn.py [--batch 4 --dim 64 --lengths 256 1024 4096 16384 --threads 1 --device cpu]
    PYTHONPATH=. python bench/rnn.py --table           # the tables of the stored results again, computing nothing
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

from machine import RESULTS, print_tables, table_flag

from kslm.io import write_json

STORED = [RESULTS / "rnn.json", RESULTS / "rnn_narrow.json"]


def make(cell, B, T, D, device, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    if cell == "tanh":
        params = [0.5 + 0.45 * torch.rand(D, generator=g)]
        u = 0.5 * torch.randn(B, T, D, generator=g)
    else:
        params = list(2 * torch.rand(3, D, generator=g) - 1)
        u = torch.randn(B, T, 3 * D, generator=g)
    return [p.to(device) for p in params], u.to(device)


def timed(fn, device, repeats):
    import torch

    def once():
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t, out

    once()  # warm-up (allocator, kernels)
    runs = [once() for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def run(cell, B, T, D, backward, device, repeats):
    import torch

    from kslm.nn.rnn import GRUCell, TanhCell, parallel_rnn, sequential_rnn

    params, u = make(cell, B, T, D, device)
    kind = TanhCell if cell == "tanh" else GRUCell

    def go(solver):
        ps = [p.clone().requires_grad_(backward) for p in params]
        uu = u.clone().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            x, info = solver(kind(*ps), uu)
            if backward:
                x.sum().backward()
        return x.detach(), info

    t_seq, (x_seq, _) = timed(lambda: go(lambda c, uu: (sequential_rnn(c, uu), None)), device, repeats)
    t_par, (x_par, info) = timed(lambda: go(parallel_rnn), device, repeats)
    return {
        "cell": cell, "pass": "fwd+bwd" if backward else "fwd", "T": T, "batch": B, "dim": D,
        "sequential_s": t_seq, "parallel_s": t_par, "speedup": t_seq / t_par,
        "newton_iterations": info["iterations"], "max_abs_diff": float((x_par - x_seq).abs().max()),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    p.add_argument("--cells", nargs="+", default=["tanh", "gru"], choices=["tanh", "gru"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "rnn.json"))
    table_flag(p, STORED)
    args = p.parse_args(argv)
    if args.table is not None:
        print_tables(args.table, STORED, markdown)
        return
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for cell in args.cells:
        for backward in (False, True):
            for T in args.lengths:
                r = run(cell, args.batch, T, args.dim, backward, args.device, args.repeats)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name() if args.device != "cpu" else platform.processor() or platform.machine()
    config = {k: v for k, v in vars(args).items() if k != "table"}
    report = {"config": config, "torch": torch.__version__, "device": device, "rows": rows}
    write_json(args.out, report, indent=1)
    print(markdown(report))


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"{report['device']}, batch {c['batch']} × {c['dim']} channels, {c['threads']} thread(s), torch {report['torch']}",
             "", "| cell | pass | T | sequential (s) | parallel (s) | speed-up | Newton iterations | max abs diff |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['cell']} | {r['pass']} | {r['T']:,} | {r['sequential_s']:.4f} | {r['parallel_s']:.4f} | "
                     f"{r['speedup']:.1f}× | {r['newton_iterations']} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
