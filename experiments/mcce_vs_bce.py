"""Multilabel "softmax + CE" (MCCE) vs per-cell sigmoid BCE for a GlobalPointer NER head (post 11a, "将"Softmax+交叉熵"
推广到多标签分类问题", kexue.fm/archives/7359; GlobalPointer, archives/8373).

Claim: with many candidate labels and few positives — a span head scores ≈ L²/2 cells per type and a sentence has a
handful of entities — independent sigmoids are swamped by the negatives (their loss is lowered most by pushing
everything down), so they need re-weighting or threshold tuning; MCCE compares every positive with every negative
through one logsumexp and needs neither. Su: MCCE works better than sigmoid + BCE for such heads.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/mcce_vs_bce.py [--steps 3000]
    PYTHONPATH=. python experiments/mcce_vs_bce.py --table      # the stored results' table again, computing nothing

Each run is `kslm fit --config configs/ner/cluener-egp.yaml` shrunk to d = 128, 2 blocks, 4 heads, max_length 64,
batch 16, lr 2e-3, --steps steps, the shipped dropout and token dropout but no gradient penalty (it doubles the cost),
with `--model.loss mcce` or `bce` — the same seed, data order and init; dev span F1 / P / R on the 1,000-line CLUENER
dev split at every validation. Both decide with the same rule, logit > 0 (for BCE: p > ½).
"""

import argparse
import os
import sys
import time
from pathlib import Path

from _common import RESULTS, kslm_main, print_tables, save, series, table_flag, workdir
from _plots import after_step, figure, figures_after_run, plain_log_y, plot_flag, plot_stored

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "cluener2020" / "train.json"
LOSSES = ["mcce", "bce"]
STORED = [RESULTS / "mcce_vs_bce.json"]


def run(loss: str, rundir: Path, a) -> dict:
    args = ["fit", "--config", str(REPO / "configs/ner/cluener-egp.yaml"), "--model.loss", loss,
            "--data.train_file", str(TRAIN),
            "--model.backbone.d_model", str(a.d_model), "--model.backbone.n_layers", "2", "--model.backbone.n_heads", "4",
            "--data.max_length", "64", "--data.batch_size", "16", "--model.optim.lr", "2e-3", "--model.optim.warmup_steps", "50",
            "--model.penalty.kind", "none", "--model.head", a.head, "--trainer.max_steps", str(a.steps),
            "--trainer.val_check_interval", str(a.val_every), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint.dirpath", str(rundir / "ckpt")]
    t0 = time.time()
    kslm_main(args, rundir)
    logs = rundir / "logs"
    f1, p, r = (series(logs, f"val/{k}") for k in ("f1", "precision", "recall"))
    return {"loss": loss, "head": a.head, "f1": f1, "precision": p, "recall": r, "final_f1": f1[-1][1],
            "final_precision": p[-1][1], "final_recall": r[-1][1], "seconds": time.time() - t0,
            "train_loss": series(logs, "train/loss"), "val_loss": series(logs, "val/loss")}


def table(payload) -> str:
    steps = [s for s, _ in payload["runs"][0]["f1"]]
    lines = [f"| loss | head | dev F1 (%) at {' / '.join(str(s + 1) for s in steps)} | final P | final R | final F1 | seconds |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in payload["runs"]:
        lines.append(f"| {r['loss']} | {r['head']} | {' / '.join(f'{100 * v:.1f}' for _, v in r['f1'])} | "
                     f"{100 * r['final_precision']:.1f} | {100 * r['final_recall']:.1f} | **{100 * r['final_f1']:.1f}** | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


LOSS_COLOURS = {"mcce": "C0", "bce": "C3"}


def figures(payload):
    """Dev span F1, precision and recall against the step for each loss; the loss curves where the result file has
    them (runs made after 2026-11-28)."""
    fig, (ax, ax2) = figure(2)
    for r in payload["runs"]:
        c = LOSS_COLOURS.get(r["loss"])
        pct = [(s, 100 * v) for s, v in r["f1"]]
        ax.plot(*after_step(pct), "o-", color=c, label=f"{r['loss']} ({r['head']})")
        ax2.plot(*after_step([(s, 100 * v) for s, v in r["precision"]]), "s--", color=c, label=f"{r['loss']}: precision")
        ax2.plot(*after_step([(s, 100 * v) for s, v in r["recall"]]), "o-", color=c, label=f"{r['loss']}: recall")
    ax.set(xlabel="step", ylabel="CLUENER dev span F1 (%)", ylim=(0, None), title="MCCE vs sigmoid BCE: F1")
    ax.legend()
    ax2.set(xlabel="step", ylabel="%", ylim=(0, 100), title="Precision and recall (threshold: logit > 0)")
    ax2.legend()
    yield "f1", fig
    curves = [r for r in payload["runs"] if r.get("train_loss")]
    if curves:
        fig, axes = figure(len(curves))
        for ax, r in zip(axes, curves, strict=True):
            ax.plot(*after_step(r["train_loss"]), color=LOSS_COLOURS.get(r["loss"]), alpha=0.5, linewidth=1, label="train")
            ax.plot(*after_step(r["val_loss"]), "o-", color=LOSS_COLOURS.get(r["loss"]), label="val")
            plain_log_y(ax)
            ax.set(xlabel="step", ylabel=f"{r['loss']} loss", title=f"{r['loss']} loss (not comparable across losses)")
            ax.legend()
        yield "loss", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--head", default="egp", choices=["egp", "gp"])
    ap.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "mcce_vs_bce.json"))
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
    torch.set_num_threads(1)
    t0 = time.time()
    out = Path(a.out).resolve()
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
               "command": " ".join(["python", "experiments/mcce_vs_bce.py", *sys.argv[1:]]), "runs": []}
    with workdir("kslm-mcce-") as work:
        for loss in a.losses:
            payload["runs"].append(run(loss, Path(work) / loss, a))
            print(f"{loss}: final F1 {payload['runs'][-1]['final_f1']:.3f}", file=sys.stderr)
            payload["wall_seconds"] = time.time() - t0
            save(out, payload)
    figures_after_run(payload, out, figures, a.figures)
    print(table(payload))


if __name__ == "__main__":
    main()
