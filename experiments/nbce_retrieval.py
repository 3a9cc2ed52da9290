"""NBCE retrieval demonstration: a small kslm LM trained on a W-token window answers over 8×W tokens.

    python experiments/nbce_retrieval.py data  --out /tmp/nbce-exp           # synthetic training documents
    python experiments/nbce_retrieval.py train --out /tmp/nbce-exp           # kslm fit (a few CPU minutes)
    python experiments/nbce_retrieval.py eval  --out /tmp/nbce-exp           # NBCE vs truncation, table + JSON

Task: the context is many "key=value" lines ("qk=37"); the question asks the value of one key. Each training
document is one window-sized prompt in the NBCE template followed by its answer; in half of them the asked key is
absent from the context and the answer is a random value (so the model learns to be uncertain when the fact is not
in its chunk — what min-entropy pooling needs). At evaluation the context holds 8 windows' worth of lines and the
fact sits in exactly one of them.
"""

import argparse
import json
import random
import string
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
TEMPLATE = "User: {context}\n\n{question}\n\nAssistant:"


def line(key: str, value: str) -> str:
    return f"{key}={value}"


def facts(rng: random.Random, n: int):
    keys = rng.sample(KEYS, n)
    return [(k, f"{rng.randrange(100):02d}") for k in keys]


def training_doc(rng: random.Random, lines_per_window: int) -> str:
    n = rng.randint(1, lines_per_window)
    kv = facts(rng, n + 1)
    asked, shown = kv[-1], kv[:-1]
    if rng.random() < 0.5:  # the fact is in the context
        asked = shown[rng.randrange(n)]
        answer = asked[1]
    else:  # it is not: any value is as good as another
        answer = f"{rng.randrange(100):02d}"
    context = "\n".join(line(k, v) for k, v in shown)
    return TEMPLATE.format(context=context, question=f"Value of {asked[0]}?") + " " + answer


def eval_record(rng: random.Random, idx: int, lines_per_window: int, windows: int) -> dict:
    kv = facts(rng, lines_per_window * windows)
    asked = kv[rng.randrange(len(kv))]
    return {"id": idx, "context": "\n".join(line(k, v) for k, v in kv), "question": f"Value of {asked[0]}?",
            "answer": asked[1], "position": kv.index(asked) / len(kv)}


WINDOW = 128          # the model's window W (char tokens): backbone.max_length = data.seq_len = W
LINES_PER_WINDOW = 14  # "ab=37" lines that fit a window beside the template, the question and the answer
WINDOWS = 8            # evaluation contexts hold 8 windows' worth of lines


def make_data(out: Path, n_docs: int, seed: int) -> Path:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_docs):
            f.write(json.dumps({"text": training_doc(rng, LINES_PER_WINDOW)}) + "\n")
    return path


def train_args(out: Path, steps: int) -> list:
    return [
        "fit", "--config", str(REPO / "configs/lm/transformer.yaml"),
        "--data.data_files", str(out / "train.jsonl"), "--data.tokenizer_kind", "char", "--data.vocab_size", "128",
        "--data.seq_len", str(WINDOW), "--data.batch_size", "32", "--data.val_fraction", "0.01",
        "--data.cache_dir", str(out / "cache"),
        "--model.backbone.d_model", "128", "--model.backbone.n_layers", "2", "--model.backbone.n_heads", "4",
        "--model.backbone.tied_init", "none", "--model.backbone.max_length", str(WINDOW),
        "--model.lr", "3e-3", "--model.warmup_steps", "50",
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "200",
        "--trainer.limit_val_batches", "4", "--trainer.enable_progress_bar", "false",
        "--checkpoint.dirpath", str(out / "ckpt"),
    ]


def truncated(rec: dict, model, window: int) -> list:
    """Plain truncation: the template with as many of the context's last lines as fit the window."""
    lines, keep = rec["context"].split("\n"), []
    while lines and len(model.encode_prompt("\n".join([lines[-1], *keep]), rec["question"])) + model.max_new_tokens <= window:
        keep.insert(0, lines.pop())
    return model.encode_prompt("\n".join(keep), rec["question"])


def evaluate(out: Path, n: int, seed: int, ckpt=None) -> dict:
    import time

    import torch

    from kslm.data.nbce import build_prompts
    from kslm.tasks.nbce import NBCE

    torch.set_num_threads(1)
    ckpt = ckpt or out / "ckpt" / "last.ckpt"
    model = NBCE(checkpoint=str(ckpt), temperature=0.0, max_new_tokens=4).eval()
    rng = random.Random(seed)
    records = [eval_record(rng, i, LINES_PER_WINDOW, WINDOWS) for i in range(n)]
    rows = {"nbce": [], "nbce_mean_pooling": [], "truncation": [], "oracle_chunk": []}
    chunks, ctx_tokens, hit_chunk, t0 = [], [], [], time.perf_counter()
    for rec in records:
        item = build_prompts({**rec, "line": rec["id"]}, model, WINDOW, model.max_new_tokens, 10**7)
        prompts = item["prompts"]
        chunks.append(len(prompts) - 1)
        ctx_tokens.append(model.count_tokens(rec["context"]))
        tokens, chosen = model.generate(prompts)
        rows["nbce"].append(model.decode(tokens).strip() == rec["answer"])
        fact = line(rec["question"][9:11], rec["answer"])
        hit_chunk.append(bool(chosen) and fact in item["chunks"][chosen[-1] - 1])
        model.pooling = "mean"
        rows["nbce_mean_pooling"].append(model.decode(model.generate(prompts)[0]).strip() == rec["answer"])
        model.pooling = "min_entropy"
        for name, p in (("truncation", truncated(rec, model, WINDOW)),
                        ("oracle_chunk", next(p for c, p in zip(item["chunks"], prompts[1:], strict=True) if fact in c))):
            model.beta = 0.0  # one context with β = 0: plain greedy decoding of that prompt
            tokens, _ = model.generate([prompts[0], p])
            model.beta = 0.25
            rows[name].append(model.decode(tokens).strip() == rec["answer"])
    result = {
        "checkpoint": str(ckpt), "records": n, "window": WINDOW, "mean_chunks": sum(chunks) / n,
        "mean_context_tokens": sum(ctx_tokens) / n, "context_in_windows": sum(ctx_tokens) / n / WINDOW,
        "accuracy": {k: sum(v) / n for k, v in rows.items()},
        "nbce_chose_the_fact_chunk": sum(hit_chunk) / n, "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["data", "train", "eval"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/nbce-exp"))
    ap.add_argument("--docs", type=int, default=60000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint to evaluate (default OUT/ckpt/last.ckpt)")
    args = ap.parse_args(argv)
    if args.stage == "data":
        print(make_data(args.out, args.docs, args.seed))
    elif args.stage == "train":
        import os

        from kslm.cli import main as kslm

        os.chdir(args.out)  # TensorBoard logs go to OUT/logs
        kslm(train_args(args.out.resolve(), args.steps))
    else:
        evaluate(args.out, args.records, args.seed + 1, args.ckpt)


if __name__ == "__main__":
    sys.exit(main())
