"""Tied input/output embeddings: initial loss and early convergence of Su's remedies (post 7, "语言模型输出端共享
Embedding的重新探索", kexue.fm/archives/9698; issue 6, experiment 4).

Claim: with tied embeddings of std σ and residual branches ≈ 0 the untrained model is a 2-gram model whose logits
are (w_i/σ)·w_j, so its initial loss is ≈ log(e^{dσ} + V − 1): for σ = 1/√d ≈ √d, far above the uniform ln V.
Remedies: σ = ln V / d ("rescaled": loss ≈ ln(2V − 1)), swapping the halves of the final feature ("swap"), an
orthogonal d×d projection after the final norm ("ortho"), or untying. Su: rescaled converges the slowest; the
other three converge at about the same speed.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/tied_embedding_init.py [--steps 250]
        [--out experiments/results/tied_embedding_init.json]
    PYTHONPATH=. python experiments/tied_embedding_init.py --table   # the stored results' table again, computing nothing

Variants = `--model.backbone.tie_embeddings / tied_init`: tied σ = 1/√d is kslm's `tied_init none` (no
re-initialisation needed); rescaled, swap, ortho; untied (`tie_embeddings false`, head std 1/√d).
Per variant, with the same seed and overrides of configs/lm/tinyshakespeare.yaml (char-level Tiny Shakespeare,
d = 128, 2 Pre-LN blocks): `kslm validate` on the untrained model (step 0: the same seed and construction path as
`kslm fit`, so the same initial weights) then `kslm fit` for --steps steps, val loss on 8 held-out batches every
--val-every steps. Besides the full model's initial loss, the script measures the "2-gram limit" that the formula
describes — the same initial weights with every residual branch removed (logits = head(final_norm(embed_norm(E[x]))),
on consecutive-character pairs of the corpus, 3 seeds) — because a Pre-LN model with Xavier-initialised branches
is not near-identity at init, so its own initial loss need not follow the formula.
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

from _common import RESULTS, kslm_main, no_grad, print_tables, save, series, table_flag, workdir
from _plots import figure, figures_after_run, plain_log_y, plot_flag, plot_stored

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
VARIANTS = {  # name → (tie_embeddings, tied_init)
    "tied σ=1/√d": ("true", "none"),
    "rescaled σ=lnV/d": ("true", "rescaled"),
    "swap halves": ("true", "swap"),
    "ortho projection": ("true", "ortho"),
    "untied": ("false", "none"),
}
STORED = [RESULTS / "tied_embedding_init.json"]


def kslm(sub, tie, init, rundir: Path, a) -> None:
    args = [sub, "--config", str(REPO / "configs/lm/tinyshakespeare.yaml"), "--data.data_files", str(DATA),
            "--data.seq_len", "128", "--data.batch_size", str(a.batch), "--model.backbone.d_model", str(a.d_model),
            "--model.backbone.n_layers", str(a.layers), "--model.backbone.n_heads", str(a.heads),
            "--model.backbone.tie_embeddings", tie, "--model.backbone.tied_init", init,
            "--model.optim.lr", str(a.lr), "--model.optim.warmup_steps", str(a.warmup), "--trainer.limit_val_batches", "8",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    if sub == "fit":
        args += ["--trainer.max_steps", str(a.steps), "--trainer.val_check_interval", str(a.val_every),
                 "--trainer.check_val_every_n_epoch", "null", "--checkpoint.dirpath", str(rundir / "ckpt")]
    kslm_main(args, rundir)


@no_grad
def two_gram_limit(tie: str, init: str, ids, a, seeds=(1, 2, 3)) -> dict:
    """Initial loss of the model with its residual branches removed, and the measured dσ (mean ‖w_i‖²/σ), on the
    token-id tensor `ids`."""
    import torch
    from torch.nn import functional as F

    from kslm.nn import Backbone, BackboneConfig
    from kslm.nn.embedding import embedding_std

    V = a.vocab
    cfg = BackboneConfig(vocab_size=V, d_model=a.d_model, n_layers=a.layers, n_heads=a.heads,
                         tie_embeddings=tie == "true", tied_init=init)
    sigma = embedding_std(V, a.d_model, cfg.tie_embeddings, init)
    losses, self_logits = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        bb = Backbone(cfg)
        h = bb.final_norm(bb.embed_norm(bb.embed(ids[:-1])))
        losses.append(F.cross_entropy(bb.logits(h).float(), ids[1:]).item())
        e = bb.final_norm(bb.embed_norm(bb.embed.weight))
        self_logits.append((bb.logits(e).diagonal()).mean().item())  # logit of token i for input i
    return {"sigma": sigma, "d_sigma": a.d_model * sigma, "two_gram_loss": sum(losses) / len(losses),
            "self_logit": sum(self_logits) / len(self_logits), "vocab": V}


def table(payload) -> str:
    steps = sorted({s for r in payload["runs"] for s, _ in r["curve"]})
    show = [s for s in steps if s in payload["show_steps"]] or steps
    V = payload["vocab"]
    lines = ["| variant | σ | formula | 2-gram limit (measured) | initial val loss (model) | "
             + " | ".join(f"step {s}" for s in show) + " |", "|---|---:|---:|---:|---:|" + "---:|" * len(show)]
    for r in payload["runs"]:
        tied_plain = r["tied_init"] in ("none", "rescaled") and r["tie"] == "true"
        formula = f"{math.log(math.exp(r['d_sigma']) + V - 1):.2f}" if tied_plain else f"ln V + ½ = {math.log(V) + 0.5:.2f}"
        curve = dict(r["curve"])
        lines.append(f"| {r['variant']} | {r['sigma']:.4f} | {formula} | {r['two_gram_loss']:.2f} | {r['initial_loss']:.3f} | "
                     + " | ".join(f"{curve[s]:.3f}" if s in curve else "–" for s in show) + " |")
    return "\n".join(lines)


VARIANT_COLOURS = ("C3", "C1", "C0", "C2", "C4")


def figures(payload):
    """The val-loss curves of the variants from their initial loss (× at step 0: the measured 2-gram limit; dotted:
    ln V), and the same curves from step 50 on."""
    fig, (ax, ax2) = figure(2)
    for r, colour in zip(payload["runs"], VARIANT_COLOURS, strict=False):
        steps, values = [s for s, _ in r["curve"]], [v for _, v in r["curve"]]
        ax.plot(steps, values, "o-", color=colour, label=r["variant"])
        ax.plot([0], [r["two_gram_loss"]], "x", color=colour, markersize=8)
        late = [(s, v) for s, v in r["curve"] if s >= 50]
        ax2.plot([s for s, _ in late], [v for _, v in late], "o-", color=colour, label=r["variant"])
    ax.axhline(payload["ln_V"], color="k", linestyle=":", linewidth=1, label=f"ln V = {payload['ln_V']:.2f}")
    plain_log_y(ax)
    ax.set(xlabel="step", ylabel="val loss (nats/char, log)",
           title=f"Tied embeddings, d {payload['d_model']}, V {payload['vocab']} (×: 2-gram limit)")
    ax.legend(fontsize=7)
    ax2.set(xlabel="step", ylabel="val loss (nats/char)", title="From step 50")
    ax2.legend(fontsize=7)
    yield "curves", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "tied_embedding_init.json"))
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
    torch.set_num_threads(1)  # shared CPU: one thread avoids stalls at every OpenMP barrier
    from kslm.data.lm import LMDataModule

    t_start = time.time()
    tok = LMDataModule(data_files=str(DATA), tokenizer_kind="char", vocab_size=512).load_tokenizer()
    a.vocab = tok.get_vocab_size()
    ids = torch.tensor(tok.encode(DATA.read_text(encoding="utf-8")[:200_000]).ids)
    out = Path(a.out).resolve()
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "command": " ".join(["python", "experiments/tied_embedding_init.py", *sys.argv[1:]]),
               "vocab": a.vocab, "d_model": a.d_model, "ln_V": math.log(a.vocab),
               "show_steps": sorted({a.val_every, 2 * a.val_every, 4 * a.val_every, a.steps // 2, a.steps}), "runs": []}
    with workdir("kslm-tied-") as work:
        for name in a.variants:
            tie, init = VARIANTS[name]
            t0, c0 = time.time(), time.process_time()
            rundir = Path(work) / init / tie
            kslm("validate", tie, init, rundir / "init", a)
            initial = series(rundir / "init" / "logs", "val/loss")
            kslm("fit", tie, init, rundir / "fit", a)
            curve = [(s + 1, v) for s, v in series(rundir / "fit" / "logs", "val/loss")]  # logged at step done − 1
            payload["runs"].append({"variant": name, "tie": tie, "tied_init": init, "initial_loss": initial[-1][1],
                                    "curve": [(0, initial[-1][1]), *curve], **two_gram_limit(tie, init, ids, a),
                                    "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0})
            print(f"{name}: initial {initial[-1][1]:.3f}, final {curve[-1][1]:.3f}", file=sys.stderr)
            payload["wall_seconds"], payload["cpu_seconds"] = time.time() - t_start, time.process_time()
            save(out, payload)  # after every run: an interrupted sweep keeps what it measured
    figures_after_run(payload, out, figures, a.figures)
    print(table(payload))


if __name__ == "__main__":
    main()
