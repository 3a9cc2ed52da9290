"""Pre-Norm vs Post-Norm at equal depth: quality, and how much the layers of each stack differ (issue 6,
experiment 5).

Post: "为什么Pre Norm的效果不如Post Norm？" (kexue.fm/archives/9009).
Claim: Pre-Norm x_{t+1} = x_t + F_t(Norm(x_t)) lets ‖x_t‖ grow like t, so late layers barely move the stream and
F_t(Norm(x_t)) + F_{t+1}(Norm(x_{t+1})) ≈ (F_t + F_{t+1})(Norm(x_t)): two layers act as one wider layer, the
"effective depth" is watered down, and Post-Norm (trained with warmup) ends better.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/pre_post_norm.py [--layers 6] [--steps 400] [--lr 1e-3]
    PYTHONPATH=. python experiments/pre_post_norm.py --table      # the stored results' table again, computing nothing

Per norm: `kslm fit` on char-level Tiny Shakespeare (configs/lm/tinyshakespeare.yaml shrunk to d = 128, 4 heads),
same seed, LR, warmup (enough for Post-LN) and steps; final val loss. Then, from the run's last checkpoint, on
val batches, per residual sub-layer t (attention and FFN alternate; hooks on kslm.nn.residual.Residual and its
sub-layer): the branch output F_t, the stream x_t entering it and
  rel      ‖F_t‖ / ‖x_t‖                               how much the sub-layer moves the stream
  cos_x    cos(x_t, x_{t+1})                            how alike consecutive stream states are
  cos_F    cos(F_t, F_{t+2})                            increments of the same sub-layer type in consecutive blocks
  cos_F1   cos(F_t, F_{t+1})                            increments of consecutive sub-layers
  subst    ‖F_{t+1}(in(x_{t+1})) − F_{t+1}(in(x_t))‖ / ‖F_{t+1}(in(x_{t+1}))‖   the post's approximation, directly:
           in = Norm for Pre (the branch input), identity for Post; small = layer t+1 could have run in parallel
           with layer t (width, not depth)
all per token, averaged over tokens; the table gives the mean over sub-layers and over the top half of the stack.
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

from _common import RESULTS, kslm_main, no_grad, print_tables, save, series, table_flag, workdir
from _plots import after_step, figure, figures_after_run, plot_flag, plot_stored

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
NORMS = ("pre", "post", "deepnorm")
SHAPE = {"d_model": 128, "n_heads": 4}
DATA = {"seq_len": 64, "batch_size": 16}
METRICS = ("rel", "cos_x", "cos_F", "cos_F1", "subst")
STORED = [RESULTS / "pre_post_norm.json"]


def fit(norm, a, rundir):
    args = ["fit", "--config", str(REPO / "configs/lm/tinyshakespeare.yaml"), "--data.data_files", str(TEXT),
            "--data.seq_len", str(DATA["seq_len"]), "--data.batch_size", str(DATA["batch_size"]),
            *[x for k, v in SHAPE.items() for x in (f"--model.backbone.{k}", str(v))],
            "--model.backbone.n_layers", str(a.layers), "--model.backbone.norm", norm, "--model.optim.lr", str(a.lr),
            "--model.optim.warmup_steps", str(a.warmup), "--trainer.max_steps", str(a.steps),
            "--trainer.val_check_interval", str(max(a.steps // 4, 1)), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.limit_val_batches", "8", "--trainer.log_every_n_steps", "10",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint.dirpath", str(rundir / "ckpt"), "--checkpoint.save_last", "true"]
    t0 = time.time()
    kslm_main(args, rundir)
    val = series(rundir / "logs", "val/loss")
    return ({"val_curve": val, "train_curve": series(rundir / "logs", "train/loss"), "final_val": val[-1][1],
             "seconds": time.time() - t0}, rundir / "ckpt" / "last.ckpt")


def val_batches(n):
    from kslm.data.lm import LMDataModule

    dm = LMDataModule(data_files=str(TEXT), tokenizer_kind="char", vocab_size=512, val_fraction=0.05, **DATA)
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.val_dataloader())
    return [next(it)["input_ids"][:, :-1] for _ in range(n)]


def cos(u, v):
    from torch.nn import functional as F

    return F.cosine_similarity(u, v, dim=-1).mean()


def rel(u, v):
    return (u.norm(dim=-1) / v.norm(dim=-1)).mean()


@no_grad
def layer_stats(ckpt, batches):
    """Per residual sub-layer statistics of a trained backbone (see the module docstring)."""
    import torch

    from kslm.checkpoint import load_backbone
    from kslm.nn import Backbone

    cfg, state, _ = load_backbone(ckpt)
    model = Backbone(cfg).eval()
    model.load_state_dict(state)
    xs, fs, ctxs = [], [], []  # per sub-layer, in order: the stream entering it, its branch output F_t, the context

    def enter(module, args):
        xs.append(args[0])
        ctxs.append(args[1])

    hooks = [layer.register_forward_pre_hook(enter) for layer in model.layers]
    hooks += [layer.sublayer.register_forward_hook(lambda m, args, out: fs.append(out)) for layer in model.layers]
    sums = {k: torch.zeros(len(model.layers)) for k in METRICS}
    counts = {k: torch.zeros(len(model.layers)) for k in METRICS}
    for ids in batches:
        xs.clear(), fs.clear(), ctxs.clear()
        model(ids)
        ctx, Fs, L = ctxs[0], list(fs), len(xs)  # a copy: the substitution calls below fire the hooks
        outs = xs[1:] + [None]

        def branch_input(i, x):
            layer = model.layers[i]
            return layer.norm(x) if layer.style == "pre" else x

        for t in range(L):
            vals = {"rel": rel(Fs[t], xs[t])}
            if t + 1 < L:
                vals["cos_x"] = cos(xs[t], outs[t])
                vals["cos_F1"] = cos(Fs[t], Fs[t + 1])
                shifted = model.layers[t + 1].sublayer(branch_input(t + 1, xs[t]), ctx)
                vals["subst"] = rel(Fs[t + 1] - shifted, Fs[t + 1])
            if t + 2 < L:
                vals["cos_F"] = cos(Fs[t], Fs[t + 2])
            for k, v in vals.items():
                sums[k][t] += float(v)
                counts[k][t] += 1
    for h in hooks:
        h.remove()
    per_layer = {k: [float(s / c) if c else None for s, c in zip(sums[k], counts[k], strict=True)] for k in METRICS}
    summary = {}
    for k, vs in per_layer.items():
        vs = [v for v in vs if v is not None]
        summary[k] = sum(vs) / len(vs)
        top = vs[len(vs) // 2:]
        summary[k + "_top"] = sum(top) / len(top)
    return {"per_layer": per_layer, "summary": summary}


def table(payload) -> str:
    lines = [f"{payload['layers']} blocks, d = {payload['shape']['d_model']}, {payload['steps']} steps, LR {payload['lr']:g}, "
             f"{payload['warmup']} warmup steps, cosine decay.", "",
             "| norm | final val loss | ‖F‖/‖x‖ | cos(x_t, x_t+1) | cos(F_t, F_t+2) | cos(F_t, F_t+1) | subst. error | "
             "same, top half: ‖F‖/‖x‖ | cos(x_t, x_t+1) | subst. error |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in payload["runs"]:
        s = r["stats"]["summary"]
        lines.append(f"| {r['norm']} | {r['final_val']:.4f} | {s['rel']:.3f} | {s['cos_x']:.3f} | {s['cos_F']:.3f} | "
                     f"{s['cos_F1']:.3f} | {s['subst']:.3f} | {s['rel_top']:.3f} | {s['cos_x_top']:.3f} | {s['subst_top']:.3f} |")
    return "\n".join(lines)


NORM_COLOURS = {"pre": "C0", "post": "C3"}
PER_LAYER = [("rel", "‖F_t‖ / ‖x_t‖", "How much each sub-layer moves the stream"),
             ("cos_x", "cos(x_t, x_t+1)", "Consecutive stream states alike"),
             ("subst", "substitution error", "‖F_t+1(x_t+1) − F_t+1(x_t)‖ / ‖F_t+1(x_t+1)‖ (0: one wider layer)")]


def figures(payload):
    """The val-loss curves of Pre- and Post-LN, and the per-sub-layer statistics of the final checkpoints (even t:
    attention, odd t: FFN)."""
    fig, axes = figure(2, nrows=2, height=3.2)
    for r in payload["runs"]:
        c = NORM_COLOURS.get(r["norm"])
        if r.get("train_curve"):  # runs made after 2026-11-28
            axes[0].plot(*after_step(r["train_curve"]), color=c, alpha=0.35, linewidth=1)
        axes[0].plot(*after_step(r["val_curve"]), "o-", color=c, label=f"{r['norm']}-LN (val)")
        for ax, (key, ylabel, title) in zip(axes[1:], PER_LAYER, strict=True):
            values = r["stats"]["per_layer"][key]
            ax.plot([t for t, v in enumerate(values) if v is not None], [v for v in values if v is not None], "o-", color=c,
                    label=f"{r['norm']}-LN (mean {r['stats']['summary'][key]:.2f})")
            ax.set(xlabel="sub-layer t", ylabel=ylabel, title=title)
            ax.legend()
    axes[0].set(xlabel="step", ylabel="val loss (nats/char)",
                title=f"{payload['layers']} blocks, lr {payload['lr']:g}, {payload['warmup']} warmup steps")
    axes[0].legend()
    yield "layers", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--norms", nargs="+", default=["pre", "post"], choices=NORMS)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--val-batches", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "pre_post_norm.json"))
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
    batches = val_batches(a.val_batches)
    out = Path(a.out).resolve()
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "command": " ".join(["python", "experiments/pre_post_norm.py", *sys.argv[1:]]), "layers": a.layers,
               "steps": a.steps, "warmup": a.warmup, "lr": a.lr, "shape": SHAPE, "data": DATA, "runs": []}
    with workdir("kslm-prepost-") as work:
        for norm in a.norms:
            run, ckpt = fit(norm, a, Path(work) / norm)
            stats = layer_stats(ckpt, batches)
            payload["runs"].append({"norm": norm, **run, "stats": stats, "finite": math.isfinite(run["final_val"])})
            print(f"{norm}: val {run['final_val']:.4f} ({run['seconds']:.0f} s)", file=sys.stderr)
            save(out, payload)
    payload["wall_seconds"] = time.time() - t0
    save(out, payload)
    figures_after_run(payload, out, figures, a.figures)
    print(table(payload))
    print(f"\nwall time {payload['wall_seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
