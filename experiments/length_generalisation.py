"""Length generalisation of the attention normaliser: softmax vs softmax_plus (log-n scale) vs relu²/n, trained at
T = 128 and evaluated at T = 128 … 1024 (posts 15a "从熵不变性看Attention的Scale操作", kexue.fm/archives/8823, and
15b "听说Attention与Softmax更配哦～", kexue.fm/archives/9019; issue 6, experiment 3).

Claim: softmax's normaliser is nearly length-independent (trained attention is local), relu²/n's is not, so relu²
degrades most beyond the training length; the entropy-invariant scale log(n)/log(n₀) (softmax_plus) degrades least.
Expected ordering of the loss growth: softmax_plus < softmax < relu².

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/length_generalisation.py [--steps 800]
        [--out experiments/results/length_generalisation.json]
    PYTHONPATH=. python experiments/length_generalisation.py --table   # the stored results' table again, computing nothing

Setup: Tiny Shakespeare, char-level. The last 10 % of input.txt (cut at a paragraph break) is held out; the first
90 % is written to $KSLM_CACHE/length_generalisation/train.txt (outside the repo) and is all that `kslm fit` sees.
Three `kslm fit` runs of configs/lm/tinyshakespeare.yaml that differ only in `--model.backbone.attention`
(train_length 128 for all: it only enters softmax_plus; RoPE; max_length 1024), seq_len 128, seed 1234.
Each checkpoint is then loaded (kslm.checkpoint.load_backbone) and run on the held-out text, encoded like the
training data (paragraphs joined with </s>), cut into non-overlapping windows of T + 1 tokens over the same span
of text for every T, and the per-token cross-entropy is averaged. A causal model's loss at positions < 128 of a
long window equals its loss on a 128-token window, so all growth comes from positions ≥ 128: at T = 1024 the table
also gives, per position bucket, the mean of (token's loss in its 1024-window − the same token's loss in its
128-window), a paired difference over the same tokens (0 for positions 0–127 by causality: a check).
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

from _common import RESULTS, kslm_main, no_grad, print_tables, save, series, table_flag, workdir
from _plots import after_step, figure, figures_after_run, log_xticks, plot_flag, plot_stored

from kslm.io import write_text

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
ATTENTIONS = ["softmax", "softmax_plus", "relu2"]
BUCKETS = [(0, 128), (128, 256), (256, 512), (512, 1024)]
STORED = [RESULTS / "length_generalisation.json"]


def split_corpus(src: Path, workdir: Path, heldout: float):
    """First (1 − heldout) of the text → a training file; the rest (from a paragraph break on) is returned."""
    text = src.read_text(encoding="utf-8")
    cut = text.find("\n\n", int(len(text) * (1 - heldout)))
    workdir.mkdir(parents=True, exist_ok=True)
    train = workdir / "train.txt"
    if not train.is_file() or train.read_text(encoding="utf-8") != text[:cut]:
        write_text(train, text[:cut])
    return train, text[cut + 2:]


def encode_like_training(tokenizer, text: str):
    """Paragraphs (split on blank lines, as the datasets "text" builder does) each followed by </s>: → a 1-D id tensor."""
    import torch

    from kslm.data.tokenizer import EOS_ID

    ids = []
    for enc in tokenizer.encode_batch([p for p in text.split("\n\n") if p]):
        ids += enc.ids + [EOS_ID]
    return torch.tensor(ids)


def train(attention: str, train_file: Path, rundir: Path, a) -> dict:
    args = ["fit", "--config", str(REPO / "configs/lm/tinyshakespeare.yaml"), "--data.data_files", str(train_file),
            "--data.seq_len", "128", "--data.batch_size", str(a.batch), "--model.backbone.d_model", str(a.d_model),
            "--model.backbone.n_layers", str(a.layers), "--model.backbone.n_heads", str(a.heads),
            "--model.backbone.attention", attention, "--model.backbone.train_length", "128",
            "--model.backbone.position", "rope", "--model.backbone.max_length", "1024",
            "--model.optim.lr", str(a.lr), "--model.optim.warmup_steps", "50", "--trainer.max_steps", str(a.steps),
            "--trainer.val_check_interval", str(max(a.steps // 5, 1)), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.limit_val_batches", "8", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--checkpoint.dirpath", str(rundir / "ckpt")]
    t0, c0 = time.time(), time.process_time()
    kslm_main(args, rundir)
    return {"checkpoint": rundir / "ckpt" / "last.ckpt", "train_seconds": time.time() - t0,
            "train_cpu_seconds": time.process_time() - c0, "args": args[1:],
            "train_curve": series(rundir / "logs", "train/loss"), "val_curve": series(rundir / "logs", "val/loss")}


@no_grad
def evaluate(ckpt: Path, heldout_text: str, lengths, batch: int) -> dict:
    import torch
    from torch.nn import functional as F

    from kslm.checkpoint import load_backbone
    from kslm.data.tokenizer import UNK_ID
    from kslm.nn import Backbone

    cfg, state, tokenizer = load_backbone(ckpt)
    model = Backbone(cfg)
    model.load_state_dict(state)
    model.eval()
    ids = encode_like_training(tokenizer, heldout_text)
    longest = max(lengths)
    n_windows = (len(ids) - 1) // longest
    span = n_windows * longest  # the same predicted tokens for every T
    out = {"heldout_tokens": span, "unk_tokens": int((ids[: span + 1] == UNK_ID).sum()), "loss": {}}
    base = None
    for T in lengths:
        starts = torch.arange(0, span, T)
        windows = torch.stack([ids[s: s + T + 1] for s in starts])
        losses = []
        for i in range(0, len(windows), batch):
            w = windows[i: i + batch]
            logits = model.logits(model(w[:, :-1])).float()
            losses.append(F.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none"))
        per_pos = torch.cat(losses)  # [windows, T]; flattened, entry g is the loss of held-out token g
        out["loss"][str(T)] = per_pos.mean().item()
        base = per_pos.flatten() if base is None else base
        if T == longest:  # the same tokens' loss at T vs in a window of the shortest length: a paired difference
            delta = (per_pos.flatten() - base).view_as(per_pos)
            out["by_position"] = {f"{lo}-{hi}": per_pos[:, lo:hi].mean().item() for lo, hi in BUCKETS if hi <= T}
            out["by_position_delta"] = {f"{lo}-{hi}": delta[:, lo:hi].mean().item() for lo, hi in BUCKETS if hi <= T}
    return out


def table(runs, lengths) -> str:
    head = "| attention | " + " | ".join(f"T={T}" for T in lengths) + " | " + " | ".join(
        f"Δ T={T}" for T in lengths[1:]) + " | " + " | ".join(f"Δ pos {lo}–{hi - 1}" for lo, hi in BUCKETS) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(lengths) - 1 + len(BUCKETS))]
    for r in runs:
        base = r["loss"][str(lengths[0])]
        cells = [f"{r['loss'][str(T)]:.4f}" for T in lengths]
        cells += [f"{r['loss'][str(T)] - base:+.4f}" for T in lengths[1:]]
        cells += [f"{r['by_position_delta'].get(f'{lo}-{hi}', math.nan):+.4f}" for lo, hi in BUCKETS]
        lines.append(f"| {r['attention']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stored_table(payload) -> str:
    return table(payload["runs"], payload["lengths"])


ATT_COLOURS = {"softmax": "C0", "softmax_plus": "C2", "relu2": "C3"}


def figures(payload):
    """Held-out loss against the evaluation length T (trained at 128), and, at T = 1024, the mean loss of a token by
    its position in the window (left: per token; right: minus its loss in a 128-window); the training curves where
    the result file has them (runs made after 2026-11-28)."""
    runs, lengths = payload["runs"], payload["lengths"]
    fig, (ax, ax2) = figure(2)
    for r in runs:
        c = ATT_COLOURS.get(r["attention"])
        ax.plot(lengths, [r["loss"][str(T)] for T in lengths], "o-", color=c, label=r["attention"])
        buckets = [(int(k.split("-")[0]), int(k.split("-")[1]), v) for k, v in r["by_position_delta"].items()]
        ax2.stairs([v for *_, v in buckets], [buckets[0][0], *[hi for _, hi, _ in buckets]], baseline=None, color=c, linewidth=2,
                   label=r["attention"])
    ax.axvline(128, color="grey", linestyle="--", linewidth=1, label="training length")
    log_xticks(ax, lengths)
    ax.set(xlabel="evaluation window T (tokens)", ylabel="held-out loss (nats/char)", title="Loss beyond the training length")
    ax.legend()
    ax2.axvline(128, color="grey", linestyle="--", linewidth=1)
    ax2.set(xlabel="position in the 1024-token window", ylabel="token loss in 1024-window − in 128-window",
            title="Extra loss by position (bucket means)")
    ax2.legend()
    yield "length", fig
    curves = [r for r in runs if r.get("train_curve")]
    if curves:
        fig, (ax,) = figure()
        for r in curves:
            ax.plot(*after_step(r["train_curve"]), color=ATT_COLOURS.get(r["attention"]), alpha=0.35, linewidth=1)
            ax.plot(*after_step(r["val_curve"]), "o-", color=ATT_COLOURS.get(r["attention"]), label=r["attention"])
        ax.set(xlabel="step", ylabel="loss (nats/char); thin: train", title="Training at T = 128")
        ax.legend()
        yield "training", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--heldout", type=float, default=0.1, help="fraction of input.txt held out (the end)")
    ap.add_argument("--attentions", nargs="+", default=ATTENTIONS, choices=ATTENTIONS)
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "length_generalisation.json"))
    table_flag(ap, STORED)
    plot_flag(ap, STORED)
    a = ap.parse_args()
    if a.table is not None:
        print_tables(a.table, STORED, stored_table)
        return
    if a.plot is not None:
        plot_stored(a.plot, STORED, figures, a.figures)
        return
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(1)  # shared CPU: one thread avoids stalls at every OpenMP barrier
    from kslm.data.lm import default_cache_dir

    t_start = time.time()
    out = Path(a.out).resolve()
    train_file, heldout_text = split_corpus(DATA, default_cache_dir() / "length_generalisation", a.heldout)
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "command": " ".join(["python", "experiments/length_generalisation.py", *sys.argv[1:]]),
               "lengths": a.lengths, "train_chars": train_file.stat().st_size, "heldout_chars": len(heldout_text),
               "runs": []}
    with workdir("kslm-lengen-") as work:
        for attention in a.attentions:
            run = train(attention, train_file, Path(work) / attention, a)
            t0, c0 = time.time(), time.process_time()
            res = evaluate(run["checkpoint"], heldout_text, a.lengths, batch=8)
            payload["runs"].append({"attention": attention, "train_seconds": run["train_seconds"],
                                    "train_cpu_seconds": run["train_cpu_seconds"],
                                    "eval_seconds": time.time() - t0, "eval_cpu_seconds": time.process_time() - c0,
                                    "args": run["args"], **res, "train_curve": run["train_curve"],
                                    "val_curve": run["val_curve"]})
            print(f"{attention}: " + ", ".join(f"T={T} {v:.4f}" for T, v in res["loss"].items()), file=sys.stderr)
            payload["wall_seconds"] = time.time() - t_start
            payload["cpu_seconds"] = time.process_time()  # ≈ the wall time on an idle core (one thread)
            save(out, payload)  # after every run: an interrupted sweep keeps what it measured
    figures_after_run(payload, out, figures, a.figures)
    print(table(payload["runs"], a.lengths))


if __name__ == "__main__":
    main()
