"""NBCE retrieval demonstration: a small kslm LM trained on a W-token window answers over 8×W tokens.

    python experiments/nbce_retrieval.py data  --out /tmp/nbce-exp           # synthetic training documents
    python experiments/nbce_retrieval.py train --out /tmp/nbce-exp           # kslm fit (CPU minutes)
    python experiments/nbce_retrieval.py eval  --out /tmp/nbce-exp           # NBCE vs truncation, table + JSON
    python experiments/nbce_retrieval.py --table                             # the stored evaluations' table again

Task: associative recall over "key=value" lines ("qk=37", two letters, two digits, one character per token). A
training document is one window of 20 lines; a key that comes again has the value it had before (retrieval), a new
key has a random value (nothing to retrieve: the model learns to be uncertain there, which is what min-entropy
pooling needs). Evaluation: 160 distinct keys (8 windows' worth of lines, ≈ 7.5 W of context), the prompt template
"{context}\n{question}=" with the asked key as the question, and the 2-token value as the answer. NBCE splits the
context into 8 chunks of ≤ W tokens; truncation keeps the last lines that fit one window; "oracle" is the one chunk
that holds the fact, alone (the model's own retrieval accuracy within its window).
"""

import argparse
import json
import random
import string
import sys
from pathlib import Path

from _common import RESULTS, print_tables, table_flag
from _plots import after_step, figure, figures_after_run, plot_flag, plot_stored

from kslm.io import write_json, write_jsonl

REPO = Path(__file__).resolve().parents[1]
KEYS = [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
# a plain key=value template: the prompt ends with "ab=" and the answer is the value (the same pattern as a context
# line, so retrieval is copying what followed the key earlier in the window)
TEMPLATE = "{context}\n{question}="
STORED = [RESULTS / "nbce_retrieval.json"]  # every kept evaluation ("runs") and the headline one ("final")


def line(key: str, value: str) -> str:
    return f"{key}={value}"


def value(rng: random.Random) -> str:
    return f"{rng.randrange(100):02d}"


def training_doc(rng: random.Random, n_lines: int, p_repeat: float = 0.4) -> str:
    """A window of key=value lines in which a key, when it comes again, has the value it had before (retrieval) and
    a new key has a random value (nothing to retrieve: the model should be uncertain)."""
    seen, lines = {}, []
    for _ in range(n_lines):
        if seen and rng.random() < p_repeat:
            k = rng.choice(list(seen))
        else:
            k = rng.choice(KEYS)
            seen.setdefault(k, value(rng))
        lines.append(line(k, seen[k]))
    return "\n".join(lines)


def eval_record(rng: random.Random, idx: int, lines_per_window: int, windows: int) -> dict:
    """Distinct keys over `windows` windows' worth of lines; the question asks one of them."""
    keys = rng.sample(KEYS, lines_per_window * windows)
    kv = [(k, value(rng)) for k in keys]
    asked = kv[rng.randrange(len(kv))]
    return {"id": idx, "context": "\n".join(line(k, v) for k, v in kv), "question": asked[0], "answer": asked[1],
            "position": kv.index(asked) / len(kv)}


WINDOW = 128  # the model's window W in tokens: backbone.max_length = data.seq_len = W
# key=value lines that fit a window beside the question and the answer: 6 tokens per line with the char tokenizer,
# 4 with BPE (a key, "=", a value and the newline are one token each)
LINES_PER_WINDOW = {"char": 20, "bpe": 30}
VOCAB = {"char": 128, "bpe": 1200}
WINDOWS = 8  # evaluation contexts hold 8 windows' worth of lines


def make_data(out: Path, n_docs: int, seed: int, lines: int, p_repeat: float) -> Path:
    rng = random.Random(seed)
    path = out / "train.jsonl"
    write_jsonl(path, ({"text": training_doc(rng, lines, p_repeat)} for _ in range(n_docs)))
    return path


def train_args(out: Path, steps: int, tokenizer: str, d_model: int = 128, layers: int = 2, heads: int = 4,
               lr: float = 3e-3, batch: int = 32, accelerator: str = "cpu", val_every: int = 100) -> list:
    return [
        "fit", "--config", str(REPO / "configs/lm/transformer.yaml"),
        "--data.data_files", str(out / "train.jsonl"), "--data.tokenizer_kind", tokenizer,
        "--data.vocab_size", str(VOCAB[tokenizer]),
        "--data.seq_len", str(WINDOW), "--data.batch_size", str(batch), "--data.val_fraction", "0.01",
        "--data.cache_dir", str(out / "cache"),
        "--model.backbone.d_model", str(d_model), "--model.backbone.n_layers", str(layers),
        "--model.backbone.n_heads", str(heads),
        "--model.backbone.tied_init", "none", "--model.backbone.max_length", str(WINDOW),
        "--model.optim.lr", str(lr), "--model.optim.warmup_steps", "50", "--trainer.accelerator", accelerator,
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(val_every),
        "--trainer.limit_val_batches", "4", "--trainer.enable_progress_bar", "false",
        "--checkpoint.dirpath", str(out / "ckpt"),
    ]


def answer_of(model, tokens) -> str:
    """The value the model gave: the first line of its (at most 2-token) answer."""
    return model.decode(tokens).strip().split("\n")[0]


def truncated(rec: dict, model, window: int) -> list:
    """Plain truncation: the template with as many of the context's last lines as fit the window."""
    lines, keep = rec["context"].split("\n"), []
    while lines and len(model.encode_prompt("\n".join([lines[-1], *keep]), rec["question"])) + model.max_new_tokens <= window:
        keep.insert(0, lines.pop())
    return model.encode_prompt("\n".join(keep), rec["question"])


def evaluate(out: Path, n: int, seed: int, lines: int, ckpt=None, figures_dir=None) -> dict:
    import time

    from kslm.data.nbce import build_prompts
    from kslm.tasks.nbce import NBCE

    ckpt = ckpt or out / "ckpt" / "last.ckpt"
    model = NBCE(checkpoint=str(ckpt), temperature=0.0, max_new_tokens=2, template=TEMPLATE).eval()
    rng = random.Random(seed)
    records = [eval_record(rng, i, lines, WINDOWS) for i in range(n)]
    rows = {"nbce": [], "nbce_mean_pooling": [], "truncation": [], "oracle_chunk": []}
    chunks, ctx_tokens, hit_chunk, t0 = [], [], [], time.perf_counter()
    for rec in records:
        item = build_prompts({**rec, "line": rec["id"]}, model, WINDOW, model.max_new_tokens, 10**7)
        prompts = item["prompts"]
        chunks.append(len(prompts) - 1)
        ctx_tokens.append(model.count_tokens(rec["context"]))
        tokens, chosen = model.generate(prompts)
        rows["nbce"].append(answer_of(model, tokens) == rec["answer"])
        fact = line(rec["question"], rec["answer"])
        hit_chunk.append(bool(chosen) and fact in item["chunks"][chosen[-1] - 1])
        model.pooling = "mean"
        rows["nbce_mean_pooling"].append(answer_of(model, model.generate(prompts)[0]) == rec["answer"])
        model.pooling = "min_entropy"
        for name, p in (("truncation", truncated(rec, model, WINDOW)),
                        ("oracle_chunk", next(p for c, p in zip(item["chunks"], prompts[1:], strict=True) if fact in c))):
            model.beta = 0.0  # one context with β = 0: plain greedy decoding of that prompt
            tokens, _ = model.generate([prompts[0], p])
            model.beta = 0.25
            rows[name].append(answer_of(model, tokens) == rec["answer"])
    result = {
        "checkpoint": str(ckpt), "records": n, "window": WINDOW, "mean_chunks": sum(chunks) / n,
        "mean_context_tokens": sum(ctx_tokens) / n, "context_in_windows": sum(ctx_tokens) / n / WINDOW,
        "accuracy": {k: sum(v) / n for k, v in rows.items()},
        "nbce_chose_the_fact_chunk": sum(hit_chunk) / n, "seconds": round(time.perf_counter() - t0, 1),
    }
    if (out / "logs").is_dir():  # the train stage's TensorBoard logs: the model's val-loss curve
        from _common import series

        result["val_curve"] = series(out / "logs", "val/loss")
    write_json(out / "eval.json", result, indent=1)
    figures_after_run(result, out / "eval.json", figures, figures_dir)
    print(json.dumps(result, indent=1))
    print(table(result))
    return result


def table(payload: dict) -> str:
    """Accuracy per evaluation: one eval.json, or the stored file's runs and its final (headline) evaluation."""
    final, runs = payload.get("final"), payload.get("runs", [])
    rows = [payload] if "accuracy" in payload else runs + ([final] if final and final not in runs else [])
    lines = ["| checkpoint | tokenizer | steps | records | context (windows) | NBCE % | NBCE mean pooling % | truncation % "
             "| oracle chunk % | NBCE picked the fact's chunk % |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = r["accuracy"]
        name = f"{r['checkpoint']}{' (final)' if r == final else ''}"
        lines.append(f"| {name} | {r.get('tokenizer', '–')} | {r.get('steps', '–')} | {r['records']} | "
                     f"{r['context_in_windows']:.1f} | {100 * acc['nbce']:.1f} | {100 * acc['nbce_mean_pooling']:.1f} | "
                     f"{100 * acc['truncation']:.1f} | {100 * acc['oracle_chunk']:.1f} | "
                     f"{100 * r['nbce_chose_the_fact_chunk']:.1f} |")
    return "\n".join(lines)


METHODS = [("nbce", "NBCE (min-entropy)", "C0"), ("nbce_mean_pooling", "NBCE, mean pooling", "C9"),
           ("truncation", "truncation to W", "C7"), ("oracle_chunk", "oracle: the fact's chunk alone", "C2")]


def _label(r: dict) -> str:
    path = Path(r["checkpoint"])
    tail = path.parts[-3 if path.parent.name == "ckpt" else -2:]  # /tmp/nbce-exp/ckpt/last.ckpt → nbce-exp/ckpt/last.ckpt
    model = f"d {r['d_model']}, {r['layers']} layers" if "d_model" in r else (
        "/".join(tail) if path.is_absolute() else r["checkpoint"].split(" ")[0])
    return f"{r.get('tokenizer', '?')}, p {r.get('p_repeat', '?')}, {model}\n{r.get('steps', '?')} steps, {r['records']} records"


def figures(payload):
    """Accuracy of NBCE, mean pooling, truncation and the oracle chunk for every evaluation (the stored file's runs,
    its final one last; or one eval.json); the model's val-loss curve where the evaluation has it."""
    final, runs = payload.get("final"), payload.get("runs", [])
    rows = [payload] if "accuracy" in payload else [r for r in runs if not final or r["checkpoint"] != final["checkpoint"]]
    rows += [final] if final else []
    fig, (ax,) = figure(width=7.5, height=0.7 * len(rows) + 1.2)
    for k, (key, label, colour) in enumerate(METHODS):
        ax.barh([i + 0.2 * k for i in range(len(rows))], [100 * r["accuracy"][key] for r in rows], height=0.2, color=colour,
                label=label)
    ax.set_yticks([i + 0.3 for i in range(len(rows))], [_label(r) + (" (final)" if r is final else "") for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="answered correctly (%)", xlim=(0, 100),
           title=f"Retrieval over ≈ {rows[-1]['context_in_windows']:.1f} windows of W = {rows[-1]['window']} tokens")
    ax.legend(fontsize=7, loc="center right")
    yield "accuracy", fig
    curves = [r for r in rows if r.get("val_curve")]
    if curves:
        fig, (ax,) = figure()
        for r in curves:
            ax.plot(*after_step(r["val_curve"]), "o-", label=_label(r).replace("\n", "; "))
        ax.set(xlabel="step", ylabel="val loss", title="Training the retrieval LM")
        ax.legend(fontsize=7)
        yield "training", fig


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", nargs="?", choices=["data", "train", "eval"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/nbce-exp"))
    ap.add_argument("--docs", type=int, default=60000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--tokenizer", choices=["char", "bpe"], default="char", help="one token per character, or BPE")
    ap.add_argument("--p-repeat", type=float, default=0.4, help="share of training lines that repeat an earlier key")
    ap.add_argument("--resume", action="store_true", help="continue OUT/ckpt/last.ckpt up to --steps (a longer schedule)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto (Lightning's trainer.accelerator)")
    ap.add_argument("--val-every", type=int, default=100, help="validation and checkpoint interval in steps")
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint to evaluate (default OUT/ckpt/last.ckpt)")
    table_flag(ap, STORED)
    plot_flag(ap, STORED)
    args = ap.parse_args(argv)
    if args.table is not None:
        print_tables(args.table, STORED, table)
    elif args.plot is not None:
        plot_stored(args.plot, STORED, figures, args.figures)
    elif args.stage is None:
        ap.error("give a stage (data, train or eval), --table or --plot")
    elif args.stage == "data":
        print(make_data(args.out, args.docs, args.seed, LINES_PER_WINDOW[args.tokenizer], args.p_repeat))
    elif args.stage == "train":
        import os

        import torch

        from kslm.cli import main as kslm

        torch.set_num_threads(args.threads)  # on a shared 2-core VM, 2 intra-op threads stall on each other's barriers
        os.chdir(args.out)  # TensorBoard logs go to OUT/logs
        resume = ["--ckpt_path", str(args.out.resolve() / "ckpt" / "last.ckpt")] if args.resume else []
        kslm(train_args(args.out.resolve(), args.steps, args.tokenizer, args.d_model, args.layers, args.heads, args.lr,
                        args.batch, args.accelerator, args.val_every) + resume)
    else:
        import torch

        torch.set_num_threads(args.threads)
        evaluate(args.out, args.records, args.seed + 1, LINES_PER_WINDOW[args.tokenizer], args.ckpt, args.figures)


if __name__ == "__main__":
    sys.exit(main())
