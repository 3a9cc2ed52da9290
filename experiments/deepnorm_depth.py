"""DeepNorm vs Post-LN vs Pre-LN at depth, with no warmup (issue 6, experiment 1).

Posts: "训练1000层的Transformer究竟有什么困难？" (kexue.fm/archives/8978) and "为什么需要残差？一个来自DeepNet的视角"
(kexue.fm/archives/8994); paper: DeepNet, arXiv 2203.00555.
Claim: with Post-LN the size of the model update after one optimiser step grows with depth ("increment explosion",
ΔL = O(ηNK)), so deep Post-LN stacks fail without warmup; DeepNorm (x + F(x)/α inside the norm, branch weights × β)
bounds the update and trains at any depth; Pre-LN trains too but is worse per layer than a (Deep)Post-LN stack.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/deepnorm_depth.py [--depths 6 24 96] [--steps 200] [--lr 1e-3]
    (--resume keeps the runs already in --out and does only the missing ones: an interrupted sweep goes on)
    PYTHONPATH=. python experiments/deepnorm_depth.py --table      # the stored results' table again, computing nothing

Per (norm, depth): `kslm fit` on char-level Tiny Shakespeare (configs/lm/tinyshakespeare.yaml shrunk to d = 64,
2 heads, d_ff = 2d), the same LR and a constant schedule with NO warmup, the same steps for all; final val loss and
whether the run diverged (a NaN, or a final val loss above the unigram entropy of the training text, i.e. worse than
predicting character frequencies). Separately, at init (same seed, same AdamW as kslm's task): the model update
‖f(θ₁) − f(θ₀)‖ / ‖f(θ₀)‖ of the logits f on a fixed val batch after 1 and after 5 optimiser steps (DeepNet's
"model update", its Fig. 3), the RMS change of a logit, and the relative change of the backbone's
output h (the features fed to the tied head).
"""

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

from _common import RESULTS, kslm_main, print_tables, save, series, table_flag, workdir
from _plots import after_step, figure, figures_after_run, log_xticks, plot_flag, plot_stored

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
NORMS = ("post", "deepnorm", "pre")
SHAPE = {"d_model": 64, "n_heads": 2, "d_ff": 128}
DATA = {"seq_len": 64, "batch_size": 16}
STORED = [RESULTS / "deepnorm_depth.json"]


def unigram_entropy(path: Path) -> float:
    """Entropy (nats per character) of the character distribution of the text: the loss of a model that ignores context."""
    counts = Counter(path.read_text(encoding="utf-8"))
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values())


def finite(v):
    return v if v is not None and math.isfinite(v) else None


def fit(norm, depth, a, workdir):
    rundir = Path(workdir) / f"{norm}-{depth}"
    args = ["fit", "--config", str(REPO / "configs/lm/tinyshakespeare.yaml"), "--data.data_files", str(TEXT),
            "--data.seq_len", str(DATA["seq_len"]), "--data.batch_size", str(DATA["batch_size"]),
            *[x for k, v in SHAPE.items() for x in (f"--model.backbone.{k}", str(v))],
            "--model.backbone.n_layers", str(depth), "--model.backbone.norm", norm, "--model.optim.lr", str(a.lr),
            "--model.optim.warmup_steps", "0", "--model.optim.schedule", "constant", "--trainer.max_steps", str(a.steps),
            "--trainer.val_check_interval", str(max(a.steps // 4, 1)), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.limit_val_batches", "8", "--trainer.log_every_n_steps", "5",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint.dirpath", str(rundir / "ckpt")]
    t0 = time.time()
    kslm_main(args, rundir)
    val = series(rundir / "logs", "val/loss")
    train = series(rundir / "logs", "train/loss")
    return {"val_curve": [(s, finite(v)) for s, v in val], "train_curve": [(s, finite(v)) for s, v in train],
            "final_val": finite(val[-1][1]) if val else None,
            "nan": any(not math.isfinite(v) for _, v in val + train), "seconds": time.time() - t0}


def update_size(norm, depth, a, batches, vocab):
    """Relative change of the logits on a fixed val batch after 1 and 5 AdamW steps from the seeded init."""
    import torch

    from kslm.nn import Backbone, BackboneConfig
    from kslm.optim import build_optimizer

    torch.manual_seed(1234)
    model = Backbone(BackboneConfig(**SHAPE, n_layers=depth, norm=norm, vocab_size=vocab, tied_init="swap",
                                    max_length=1024))
    opt = build_optimizer("adamw", model, lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))  # kslm's task defaults
    probe, train = batches
    with torch.no_grad():
        h0 = model(probe[:, :-1]).float()
        f0 = model.logits(h0).float()
    out = {}
    for step in range(1, 6):
        ids = train[step - 1]
        logits = model.logits(model(ids[:, :-1])).float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (1, 5):
            with torch.no_grad():
                h = model(probe[:, :-1]).float()
                f = model.logits(h).float()
            out[f"update_{step}"] = float((f - f0).norm() / f0.norm())
            out[f"logit_rms_change_{step}"] = float((f - f0).pow(2).mean().sqrt())  # absolute, per logit
            out[f"hidden_update_{step}"] = float((h - h0).norm() / h0.norm())  # the backbone's output, before the head
    out["logit_rms_init"] = float(f0.pow(2).mean().sqrt())
    return out


def probe_batches():
    import torch

    from kslm.data.lm import LMDataModule

    dm = LMDataModule(data_files=str(TEXT), tokenizer_kind="char", vocab_size=512, val_fraction=0.05, **DATA)
    dm.prepare_data()
    dm.setup("fit")
    probe = next(iter(dm.val_dataloader()))["input_ids"]
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=DATA["batch_size"], shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    return (probe, [next(it)["input_ids"] for _ in range(5)]), dm.load_tokenizer().get_vocab_size()


def table(payload) -> str:
    h = payload["unigram_entropy"]
    lines = [f"Unigram entropy of the text: {h:.3f} nats/char; LR {payload['lr']:g} constant, no warmup, "
             f"{payload['steps']} steps.", "",
             "| norm | layers | final val loss | diverged | ‖Δf‖/‖f‖ after 1 step | after 5 steps | RMS Δlogit, 1 step | "
             "‖Δh‖/‖h‖, 1 step | wall s |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in payload["runs"]:
        v = r["final_val"]
        lines.append(f"| {r['norm']} | {r['depth']} | {'NaN' if v is None else f'{v:.4f}'} | "
                     f"{'yes' if r['diverged'] else 'no'} | {r['update_1']:.3f} | {r['update_5']:.3f} | "
                     f"{r['logit_rms_change_1']:.3f} | {r['hidden_update_1']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


COLOURS = {"post": "C3", "deepnorm": "C0", "pre": "C2"}


def figures(payload):
    """The loss curves at each depth (train thin, val with markers; the unigram entropy dashed), and the first-step
    model update ‖Δf‖/‖f‖ against depth."""
    runs, h = payload["runs"], payload["unigram_entropy"]
    depths = sorted({r["depth"] for r in runs})
    fig, axes = figure(len(depths), width=3.6)
    for ax, depth in zip(axes, depths, strict=True):
        for r in (r for r in runs if r["depth"] == depth):
            c = COLOURS.get(r["norm"])
            ax.plot(*after_step([p for p in r["train_curve"] if p[1] is not None]), color=c, alpha=0.35, linewidth=1)
            ax.plot(*after_step([p for p in r["val_curve"] if p[1] is not None]), "o-", color=c, label=f"{r['norm']} (val)")
        ax.axhline(h, color="grey", linestyle="--", linewidth=1, label="unigram entropy")
        ax.set(title=f"{depth} blocks, lr {payload['lr']:g}, no warmup", xlabel="step", ylim=(1.9, 4.0))
    axes[0].set_ylabel("loss (nats/char); thin: train")
    axes[0].legend()
    yield "loss", fig
    fig, (ax,) = figure()
    for norm in dict.fromkeys(r["norm"] for r in runs):
        rows = sorted((r["depth"], r["update_1"], r["update_5"]) for r in runs if r["norm"] == norm)
        ax.plot([d for d, *_ in rows], [u for _, u, _ in rows], "o-", color=COLOURS.get(norm), label=f"{norm}, 1 step")
        ax.plot([d for d, *_ in rows], [u for *_, u in rows], "s:", color=COLOURS.get(norm), label=f"{norm}, 5 steps")
    ax.set(yscale="log", xlabel="blocks", ylabel="‖Δf‖ / ‖f‖ of the logits",
           title="Model update after AdamW steps from init")
    log_xticks(ax, depths)
    ax.legend(ncols=3, fontsize=7)
    yield "update", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", nargs="+", type=int, default=[6, 24, 96])
    ap.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "deepnorm_depth.json"))
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --out, do only the missing ones")
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
    torch.set_num_threads(1)  # a shared 2-core machine: one thread avoids stalls at every OpenMP barrier
    t0 = time.time()
    h = unigram_entropy(TEXT)
    batches, vocab = probe_batches()
    out = Path(a.out).resolve()
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "command": " ".join(["python", "experiments/deepnorm_depth.py", *sys.argv[1:]]), "lr": a.lr,
               "steps": a.steps, "shape": SHAPE, "data": DATA, "unigram_entropy": h, "runs": []}
    if a.resume and out.is_file():
        old = json.loads(out.read_text(encoding="utf-8"))
        if (old["lr"], old["steps"]) != (a.lr, a.steps):
            raise SystemExit(f"{out} holds lr {old['lr']}, {old['steps']} steps: not this sweep")
        payload["runs"], payload["command"] = old["runs"], old["command"] + " ; " + payload["command"]
    done = {(r["norm"], r["depth"]) for r in payload["runs"]}
    with workdir("kslm-deepnorm-") as work:
        for depth in a.depths:
            for norm in a.norms:
                if (norm, depth) in done:
                    continue
                r = {"norm": norm, "depth": depth, **update_size(norm, depth, a, batches, vocab), **fit(norm, depth, a, work)}
                r["diverged"] = r["nan"] or r["final_val"] is None or r["final_val"] > h
                payload["runs"].append(r)
                print(f"{norm}-{depth}: val {r['final_val']}, update {r['update_1']:.3f} ({r['seconds']:.0f} s)", file=sys.stderr)
                save(out, payload)  # after every run: an interrupted sweep keeps what it measured
    payload["wall_seconds"] = time.time() - t0
    save(out, payload)
    figures_after_run(payload, out, figures, a.figures)
    print(table(payload))
    print(f"\nwall time {payload['wall_seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
