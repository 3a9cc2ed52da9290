"""SquarePlus: its constants, its speed claim, and whether the activation matters for an LM (post 10, "SquarePlus：
可能是运算最简单的ReLU光滑近似", kexue.fm/archives/8833; Barron, arXiv 2112.11687).

    SquarePlus(x) = (x + √(x² + b)) / 2

Claims: (1) SquarePlus ≥ SoftPlus everywhere iff b ≥ 4·ln²2 = 1.921812; the minimax fit to SoftPlus is
b = 1.52382103 with max error 0.075931 (Su). (2) It is fast because it needs only +, ×, ÷ and √ (the paper: mainly
on CPU). (3) Su: the post is an exercise — do not expect activation design to change a model's quality.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/squareplus.py [--steps 300] [--numel 4194304]
    PYTHONPATH=. python experiments/squareplus.py --table      # the stored results' tables again, computing nothing

Part 1 re-derives both constants in float64 on a dense grid (golden-section search over b for the minimax; the
maximum of 4·log(eˣ+1)·log(e⁻ˣ+1) for the bound) — independently of the constants stored in kslm.nn.activations.
Part 2 times forward and forward+backward of each activation on one fp32 tensor of --numel elements, one thread and
all threads, median of 7 after 2 warm-ups: kslm's stable SquarePlus (a torch.where of two branches), the plain
formula, SoftPlus, GELU (erf and tanh), SiLU and ReLU, and SquarePlus under torch.compile (one fused kernel).
Part 3 trains the same small char-level Transformer on Tiny Shakespeare with `--model.backbone.activation` gelu,
relu and squareplus at b = 4 and at Su's b = 1.5238 (`--model.backbone.squareplus_b`; same seed, data order and
steps) and compares val loss.
"""

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

from _common import RESULTS, kslm_main, print_tables, save, series, table_flag, workdir
from _plots import after_step, figure, figures_after_run, plot_flag, plot_stored

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
POST = {"minimax_b": 1.52382103, "minimax_error": 0.075931, "upper_b": 1.921812}
VARIANTS = {"gelu": ("gelu", 4.0), "relu": ("relu", 4.0), "squareplus b=4": ("squareplus", 4.0),
            "squareplus b=1.5238 (minimax)": ("squareplus", 1.52382103)}
STORED = [RESULTS / "squareplus.json"]


def constants() -> dict:
    """Su's two constants, recomputed in float64 on x ∈ [−40, 40] (step 1e-4)."""
    import torch
    from torch.nn import functional as F

    x = torch.arange(-40.0, 40.0, 1e-4, dtype=torch.float64)
    softplus = F.softplus(x)

    def err(b: float) -> float:
        return (0.5 * (x + torch.sqrt(x * x + b)) - softplus).abs().max().item()

    lo, hi = 0.5, 4.0  # max error is unimodal in b: too small undershoots at 0, too large overshoots at 0
    g = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, m2) if err(m1) < err(m2) else (m1, hi)
    b_star = (lo + hi) / 2
    bound = (4 * torch.log1p(torch.exp(x)) * torch.log1p(torch.exp(-x))).max().item()
    below = [b for b in (1.5, 1.9, bound * (1 - 1e-9)) if (0.5 * (x + torch.sqrt(x * x + b)) - softplus).min() < 0]
    return {"minimax_b": b_star, "minimax_error": err(b_star), "upper_b": bound, "four_ln2_sq": 4 * math.log(2) ** 2,
            "error_at_b4": err(4.0), "b_values_below_softplus_somewhere": below}


def naive_squareplus(x, b=4.0):
    import torch

    return 0.5 * (x + torch.sqrt(x * x + b))


def timings(numel: int, threads: int, compiled: bool) -> list:
    import torch
    from torch.nn import functional as F

    from kslm.nn.activations import squareplus

    fns = {"squareplus (kslm, stable)": squareplus, "squareplus (plain formula)": naive_squareplus,
           "softplus": F.softplus, "gelu (erf)": F.gelu, "gelu (tanh)": lambda x: F.gelu(x, approximate="tanh"),
           "silu": F.silu, "relu": F.relu}
    if compiled:
        fns["squareplus (kslm, torch.compile)"] = torch.compile(squareplus)
    torch.manual_seed(0)
    base = torch.randn(numel) * 3
    rows = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name, fn in fns.items():
            for pass_ in ("fwd", "fwd+bwd"):
                times = []
                for i in range(9):
                    x = base.clone().requires_grad_(pass_ == "fwd+bwd")
                    t0 = time.perf_counter()
                    if pass_ == "fwd":
                        with torch.no_grad():
                            fn(x)
                    else:
                        fn(x).sum().backward()
                    if i >= 2:
                        times.append(time.perf_counter() - t0)
                rows.append({"activation": name, "pass": pass_, "threads": threads, "ms": 1e3 * statistics.median(times)})
    finally:
        torch.set_num_threads(previous)
    return rows


def train(name: str, rundir: Path, a) -> dict:
    act, b = VARIANTS[name]
    args = ["fit", "--config", str(REPO / "configs/lm/tinyshakespeare.yaml"), "--data.data_files", str(DATA),
            "--data.seq_len", "128", "--data.batch_size", "16", "--model.backbone.d_model", str(a.d_model),
            "--model.backbone.n_layers", "2", "--model.backbone.n_heads", "4", "--model.backbone.activation", act,
            "--model.backbone.squareplus_b", str(b),
            "--model.optim.lr", "3e-3", "--model.optim.warmup_steps", "20", "--trainer.max_steps", str(a.steps),
            "--trainer.val_check_interval", str(max(1, a.steps // 4)), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.limit_val_batches", "8", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--checkpoint.dirpath", str(rundir / "ckpt")]
    t0 = time.time()
    kslm_main(args, rundir)
    val = series(rundir / "logs", "val/loss")
    return {"activation": name, "val_curve": val, "final_val_loss": val[-1][1], "seconds": time.time() - t0,
            "train_curve": series(rundir / "logs", "train/loss")}


def table(p: dict) -> str:
    c = p["constants"]
    out = ["| constant | ours (float64 grid) | post |", "|---|---:|---:|",
           f"| minimax b | {c['minimax_b']:.8f} | {POST['minimax_b']} |",
           f"| its max error vs SoftPlus | {c['minimax_error']:.6f} | {POST['minimax_error']} |",
           f"| smallest b with SquarePlus ≥ SoftPlus | {c['upper_b']:.6f} (4 ln²2 = {c['four_ln2_sq']:.6f}) | "
           f"{POST['upper_b']} |", f"| max error at the default b = 4 | {c['error_at_b4']:.4f} | – |", ""]
    ref = {(r["pass"], r["threads"]): r["ms"] for r in p["timings"] if r["activation"] == "softplus"}
    out += [f"| activation ({p['numel']:,} fp32) | threads | fwd ms | vs softplus | fwd+bwd ms | vs softplus |",
            "|---|---:|---:|---:|---:|---:|"]
    for threads in sorted({r["threads"] for r in p["timings"]}):
        for name in dict.fromkeys(r["activation"] for r in p["timings"]):
            ms = {r["pass"]: r["ms"] for r in p["timings"] if r["activation"] == name and r["threads"] == threads}
            out.append(f"| {name} | {threads} | {ms['fwd']:.2f} | {ms['fwd'] / ref[('fwd', threads)]:.2f}× | "
                       f"{ms['fwd+bwd']:.2f} | {ms['fwd+bwd'] / ref[('fwd+bwd', threads)]:.2f}× |")
    if p.get("runs"):
        steps = [s for s, _ in p["runs"][0]["val_curve"]]
        out += ["", "| activation | " + " | ".join(f"val loss @ {s + 1}" for s in steps) + " | seconds |",
                "|---|" + "---:|" * (len(steps) + 1)]
        for r in p["runs"]:
            out.append(f"| {r['activation']} | " + " | ".join(f"{v:.4f}" for _, v in r["val_curve"])
                       + f" | {r['seconds']:.0f} |")
    return "\n".join(out)


ACT_COLOURS = {"gelu": "C0", "relu": "C7", "squareplus b=4": "C3", "squareplus b=1.5238 (minimax)": "C2"}


def figures(payload):
    """SquarePlus against SoftPlus and ReLU at the measured constants, and their difference; the timings relative to
    SoftPlus; the LM's val-loss curves per activation."""
    import numpy as np  # a dependency of matplotlib

    c = payload["constants"]
    bs = [(4.0, "b = 4 (kslm default)", "C3"), (c["upper_b"], f"b = 4 ln²2 = {c['upper_b']:.4f} (≥ SoftPlus)", "C1"),
          (c["minimax_b"], f"b = {c['minimax_b']:.4f} (minimax)", "C2")]
    x = np.linspace(-6, 6, 1201)
    softplus = np.logaddexp(0.0, x)
    fig, (ax, ax2) = figure(2)
    ax.plot(x, np.maximum(x, 0), color="C7", linestyle=":", label="ReLU")
    ax.plot(x, softplus, color="k", linewidth=2, label="SoftPlus")
    for b, label, colour in bs:
        sq = 0.5 * (x + np.sqrt(x * x + b))
        ax.plot(x, sq, color=colour, label=f"SquarePlus, {label}")
        ax2.plot(x, sq - softplus, color=colour, label=label)
    ax.set(xlabel="x", ylabel="activation", ylim=(-0.2, 3), xlim=(-4, 3), title="SquarePlus (x + √(x² + b)) / 2")
    ax.legend(fontsize=7)
    for sign in (1, -1):
        ax2.axhline(sign * c["minimax_error"], color="C2", linestyle="--", linewidth=1)
    ax2.axhline(0, color="k", linewidth=1)
    ax2.set(xlabel="x", ylabel="SquarePlus − SoftPlus", ylim=(-0.15, 0.35),
            title=f"Difference (dashed: ± {c['minimax_error']:.6f}, the minimax error)")
    ax2.legend(fontsize=7)
    yield "shape", fig
    threads = sorted({r["threads"] for r in payload["timings"]})
    fig, axes = figure(len(threads), width=4.8, height=3.8)
    for ax, n in zip(axes, threads, strict=True):
        rows = [r for r in payload["timings"] if r["threads"] == n]
        ref = {r["pass"]: r["ms"] for r in rows if r["activation"] == "softplus"}
        names = list(dict.fromkeys(r["activation"] for r in rows))
        for k, (pass_, colour) in enumerate((("fwd", "C0"), ("fwd+bwd", "C1"))):
            ms = {r["activation"]: r["ms"] for r in rows if r["pass"] == pass_}
            ax.barh([i + 0.4 * k for i in range(len(names))], [ms[a] / ref[pass_] for a in names], height=0.4,
                    color=colour, label=pass_)
        ax.axvline(1.0, color="k", linewidth=1)
        ax.set_yticks([i + 0.2 for i in range(len(names))], names)
        ax.invert_yaxis()
        ax.set(xlabel="time / SoftPlus's time", title=f"{payload['numel']:,} fp32 elements, {n} thread{'s' * (n > 1)}")
        ax.legend()
    yield "speed", fig
    if payload.get("runs"):
        fig, (ax,) = figure()
        for r in payload["runs"]:
            colour = ACT_COLOURS.get(r["activation"])
            if r.get("train_curve"):  # runs made after 2026-11-28
                ax.plot(*after_step(r["train_curve"]), color=colour, alpha=0.35, linewidth=1)
            ax.plot(*after_step(r["val_curve"]), "o-", color=colour, label=r["activation"])
        ax.set(xlabel="step", ylabel="val loss (nats/char)", title="LM with each FFN activation (d 128, 2 blocks)")
        ax.legend()
        yield "training", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1 << 22)
    ap.add_argument("--steps", type=int, default=300, help="LM training steps per activation (0: skip part 3)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile timing (its first call compiles)")
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "squareplus.json"))
    table_flag(ap, STORED)
    plot_flag(ap, STORED)
    a = ap.parse_args()
    if a.table is not None:
        print_tables(a.table, STORED, table)
        return
    if a.plot is not None:
        plot_stored(a.plot, STORED, figures, a.figures)
        return
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    t_start = time.time()
    out = Path(a.out).resolve()
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "numel": a.numel,
               "command": " ".join(["python", "experiments/squareplus.py", *sys.argv[1:]]), "post": POST}
    payload["constants"] = constants()
    all_threads = max(1, os.cpu_count() or 1)
    payload["timings"] = [r for n in sorted({1, all_threads}) for r in timings(a.numel, n, not a.no_compile)]
    save(out, payload)
    torch.set_num_threads(1)
    payload["runs"] = []
    if a.steps:
        with workdir("kslm-squareplus-") as work:
            for i, name in enumerate(VARIANTS):
                payload["runs"].append(train(name, Path(work) / str(i), a))
                print(f"{name}: final val loss {payload['runs'][-1]['final_val_loss']:.4f}", file=sys.stderr)
                save(out, payload)
    payload["wall_seconds"] = time.time() - t_start
    save(out, payload)
    figures_after_run(payload, out, figures, a.figures)
    print(table(payload))


if __name__ == "__main__":
    main()
