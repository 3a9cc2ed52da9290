"""Does GAU need warmup? (Su, "门控注意力单元（GAU）还需要Warmup吗？", kexue.fm/archives/8990).

Claim: a Post-Norm GAU stack with LeCun/"Xavier" init trains dozens of layers without warmup, because at init
RMS(GAU(x)) ≈ s·ν⁶/n ≈ 0.011 · RMS(x) (s = 128, n = 512, relu²/n attention): x_{l+1} = LN(x_l + GAU(x_l)) ≈ x_l.
A Post-LN Transformer, whose sub-layers return O(1)·x at init, is the classic case that needs warmup.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/gau_warmup.py                    # ratio + training runs
    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/gau_warmup.py --parts ratio      # the init ratio only (~1 min)
    PYTHONPATH=. python experiments/gau_warmup.py --table   # the stored results' tables again, computing nothing

Part 1 (ratio): one sub-layer as kslm builds it (`GatedAttentionUnit.reset_parameters`: LeCun-normal,
γ = 1, β = 0), d = 768, e = 1536, s = 128, RoPE, on x ~ N(0, 1) (unit RMS), n = 64 … 2048, bidirectional
(the post's n keys per row) and causal; RMS(F(x))/RMS(x) averaged over seeds, next to Su's s·ν⁶/n. For scale,
the same ratio for a softmax GAU and for kslm's Post-LN Transformer sub-layers (Xavier; 12 heads).
Part 2 (training): `kslm fit` on Tiny Shakespeare (char), Post-LN GAU (relu², the post's normaliser) vs a Post-LN
Transformer of the same parameter count (d = 64: 12 GAU layers with e = 2d, s = d have 7d² each = 84d² =
7 Transformer blocks of 12d²), batch 8 × 128 characters, each with warmup 0 and 100 steps at the same LR (cosine
to 0.1); final val loss and whether the run failed (non-finite, or val loss still ≥ 3.0 nats, i.e. not below the
character unigram level, ≈ 3.3).
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

from _common import RESULTS, kslm_main, print_tables, save, series, table_flag, workdir
from _plots import after_step, figure, figures_after_run, log_xticks, plot_flag, plot_stored

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
NS = [64, 128, 256, 512, 1024, 2048]
NU2, MU = 0.3557, 0.2066  # E[silu(ε)²], E[silu(ε)] for ε ~ N(0, 1) (kexue.fm/archives/8990)
STORED = [RESULTS / "gau_warmup.json"]

COMMON = ["--data.data_files", str(DATA / "tinyshakespeare" / "input.txt"), "--data.seq_len", "128",
          "--data.batch_size", "8", "--model.backbone.d_model", "64", "--model.backbone.norm", "post",
          "--trainer.limit_val_batches", "8"]
MODELS = {
    "gau": ["--model.backbone.block", "gau", "--model.backbone.n_layers", "12", "--model.backbone.expansion", "2",
            "--model.backbone.qk_dim", "64", "--model.backbone.attention", "relu2", "--model.backbone.activation", "silu"],
    "transformer": ["--model.backbone.block", "transformer", "--model.backbone.n_layers", "7",
                    "--model.backbone.n_heads", "4", "--model.backbone.attention", "softmax"],
}


# ------------------------------------------------------------------ part 1: the ratio at init
def sublayer_ratio(kind: str, n: int, mask: str, seeds: int, d: int = 768) -> float:
    import torch

    from kslm.nn.attention import build_attention_mask
    from kslm.nn.backbone import Context
    from kslm.nn.gau import GatedAttentionUnit
    from kslm.nn.rope import RotaryEmbedding
    from kslm.nn.transformer import FeedForward, MultiHeadAttention

    out = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        if kind.startswith("gau"):
            s = 128
            layer = GatedAttentionUnit(d, 2, s, "silu", kind.split("_")[1], 512, 0.0, True)
        elif kind == "attention":
            s = d // 12
            layer = MultiHeadAttention(d, 12, "softmax", 512, 0.0, True)
        else:
            s = 2
            layer = FeedForward(d, 4 * d, "gelu")
        layer.reset_parameters()
        x = torch.randn(1, n, d)
        ctx = Context(build_attention_mask(mask, n), RotaryEmbedding(s).rotation(torch.arange(n)))
        with torch.no_grad():
            y = layer(x, ctx)
        out.append((y.pow(2).mean().sqrt() / x.pow(2).mean().sqrt()).item())
    return sum(out) / len(out)


def measure_ratios(seeds: int):
    rows = []
    for n in NS:
        row = {"n": n, "su_estimate": 128 * NU2**3 / n}
        for kind in ("gau_relu2", "gau_softmax", "attention", "ffn"):
            for mask in ("bidirectional", "causal"):
                if kind == "ffn" and mask == "causal":
                    continue
                row[f"{kind}/{mask}" if kind != "ffn" else "ffn"] = sublayer_ratio(kind, n, mask, seeds)
        rows.append(row)
        print(f"ratio n={n}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "n"), file=sys.stderr)
    return rows


def ratio_table(rows) -> str:
    lines = ["| n | Su's s·ν⁶/n | GAU relu² bidir. | GAU relu² causal | GAU softmax bidir. | GAU softmax causal "
             "| Transformer attention bidir. | attention causal | FFN |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['su_estimate']:.4f} | {r['gau_relu2/bidirectional']:.4f} | {r['gau_relu2/causal']:.4f} "
                     f"| {r['gau_softmax/bidirectional']:.4f} | {r['gau_softmax/causal']:.4f} "
                     f"| {r['attention/bidirectional']:.3f} | {r['attention/causal']:.3f} | {r['ffn']:.3f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ part 2: training with and without warmup
def train_one(model: str, warmup: int, lr: float, steps: int, workdir: Path) -> dict:
    import torch

    name = f"{model}-w{warmup}-lr{lr:g}"
    rundir = workdir / name
    args = ["fit", "--config", str(REPO / "configs/lm/tinyshakespeare.yaml"), *COMMON, *MODELS[model],
            "--model.optim.lr", str(lr), "--model.optim.warmup_steps", str(warmup), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(max(steps // 6, 1)), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.log_every_n_steps", "5", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--checkpoint.dirpath", str(rundir / "ckpt"),
            "--checkpoint.save_last", "true"]
    t0 = time.time()
    kslm_main(args, rundir)
    ckpt = torch.load(rundir / "ckpt" / "last.ckpt", weights_only=True)
    params = sum(v.numel() for k, v in ckpt["state_dict"].items() if "embed" not in k and "head" not in k)
    val, train = series(rundir / "logs", "val/loss"), series(rundir / "logs", "train/loss")
    final = val[-1][1] if val else float("nan")
    diverged = not math.isfinite(final) or any(not math.isfinite(v) for _, v in train) or final >= 3.0
    return {"run": name, "model": model, "warmup": warmup, "lr": lr, "steps": steps, "params_no_embedding": params,
            "val": val, "train": train, "final_val": final,
            "max_train_after_50": max((v for s, v in train if s >= 50), default=None),
            "diverged": diverged, "seconds": time.time() - t0}


def train_table(runs) -> str:
    lines = ["| model | params (w/o embedding) | LR | warmup | val loss @ steps | final val loss | failed (NaN or ≥ 3.0) | time |",
             "|---|---:|---:|---:|---|---:|---|---:|"]
    for r in runs:
        curve = " → ".join(f"{v:.2f}" for _, v in r["val"])
        lines.append(f"| Post-LN {r['model']} | {r['params_no_embedding'] / 1e3:.0f} k | {r['lr']:g} | {r['warmup']} | {curve} "
                     f"| {r['final_val']:.4f} | {'yes' if r['diverged'] else 'no'} | {r['seconds']:.0f} s |")
    return "\n".join(lines)


def tables(payload) -> str:
    parts = [ratio_table(payload["ratio"])] if payload["ratio"] else []
    parts += [train_table(payload["runs"])] if payload["runs"] else []
    return "\n\n".join(parts)


RATIO_SERIES = {"gau_relu2/bidirectional": ("GAU relu², bidirectional", "C0", "-"),
                "gau_relu2/causal": ("GAU relu², causal", "C0", "--"),
                "gau_softmax/bidirectional": ("GAU softmax, bidirectional", "C1", "-"),
                "gau_softmax/causal": ("GAU softmax, causal", "C1", "--"),
                "attention/bidirectional": ("Transformer attention, bidir.", "C2", "-"),
                "attention/causal": ("Transformer attention, causal", "C2", "--"),
                "ffn": ("Transformer FFN", "C4", "-")}


def figures(payload):
    """RMS(sub-layer(x))/RMS(x) at init against n with Su's s·ν⁶/n; the val (markers) and train (thin) loss curves
    of the Post-LN GAU and Transformer with and without warmup, one panel per LR."""
    if payload["ratio"]:
        rows = payload["ratio"]
        fig, (ax,) = figure(width=5.6, height=3.8)
        n = [r["n"] for r in rows]
        ax.plot(n, [r["su_estimate"] for r in rows], "k:", linewidth=2, label="Su's estimate s·ν⁶/n")
        for key, (label, colour, style) in RATIO_SERIES.items():
            ax.plot(n, [r[key] for r in rows], marker="o", color=colour, linestyle=style, label=label)
        ax.set(yscale="log", xlabel="sequence length n", ylabel="RMS(F(x)) / RMS(x) at init",
               title="Sub-layer output at init (d 768, s 128)")
        log_xticks(ax, n)
        ax.legend(fontsize=7)
        yield "ratio", fig
    if payload["runs"]:
        lrs = sorted({r["lr"] for r in payload["runs"]})
        fig, axes = figure(len(lrs))
        for ax, lr in zip(axes, lrs, strict=True):
            for r in (r for r in payload["runs"] if r["lr"] == lr):
                colour, style = ("C0" if r["model"] == "gau" else "C3"), ("-" if r["warmup"] == 0 else "--")
                label = f"Post-LN {'GAU ×12' if r['model'] == 'gau' else 'Transformer ×7'}, warmup {r['warmup']}"
                ax.plot(*after_step(r["train"]), color=colour, linestyle=style, alpha=0.3, linewidth=1)
                ax.plot(*after_step(r["val"]), marker="o", color=colour, linestyle=style, label=label)
            ax.set(title=f"lr {lr:g}", xlabel="step", ylim=(1.8, 4.2))
        axes[0].set_ylabel("val loss (nats/char); thin: train")
        axes[0].legend()
        yield "training", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["ratio", "train"], choices=["ratio", "train"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2])
    ap.add_argument("--warmups", type=int, nargs="+", default=[0, 100])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--seeds", type=int, default=3, help="random inputs/inits averaged per ratio cell")
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "gau_warmup.json"))
    table_flag(ap, STORED)
    plot_flag(ap, STORED)
    a = ap.parse_args()
    if a.table is not None:
        print_tables(a.table, STORED, tables)
        return
    if a.plot is not None:
        plot_stored(a.plot, STORED, figures, a.figures)
        return
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(1)
    out = Path(a.out).resolve()
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "command": " ".join(["python", "experiments/gau_warmup.py", *sys.argv[1:]]), "ratio": [], "runs": []}
    t0 = time.time()
    if "ratio" in a.parts:
        payload["ratio"] = measure_ratios(a.seeds)
        save(out, payload)
    if "train" in a.parts:
        with workdir("kslm-gauwarm-") as work:
            for lr in a.lrs:
                for model in a.models:
                    for warmup in a.warmups:
                        payload["runs"].append(train_one(model, warmup, lr, a.steps, Path(work)))
                        r = payload["runs"][-1]
                        print(f"{r['run']}: final val {r['final_val']:.4f} ({r['seconds']:.0f} s)", file=sys.stderr)
                        save(out, payload)
    payload["seconds"] = time.time() - t0
    save(out, payload)
    figures_after_run(payload, out, figures, a.figures)
    print(tables(payload))


if __name__ == "__main__":
    main()
