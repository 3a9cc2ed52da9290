"""Decoder-only vs prefix LM (UniLM) at equal compute (Su, "为什么现在的LLM都是Decoder-only的架构？" and its FAQ,
kexue.fm/archives/9529 and 9547).

Claim: with the same parameters, data and compute, and the loss on the output part only, giving the input part
bidirectional attention (UniLM / prefix LM) brings no gain over a plain causal decoder (Su saw "no advantage, worse
on some tasks" at ~1B parameters).

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/prefix_vs_causal.py
    PYTHONPATH=. python experiments/prefix_vs_causal.py --table     # the stored results' table again, computing nothing

Task: Chinese poetry (/work/shared/data/chinese_poetry/corpus.txt, 44k works). Prompt = a work's first line,
continuation = the following lines; one sequence = </s> prompt \\n continuation </s>, cut at --seq-len tokens
(characters). Works are split 95/5 at random (seed 0); 1,000 held-out pairs are the evaluation set.
Models: the same kslm Backbone (Pre-LN Transformer, tied embeddings) with `mask: causal` or `mask: prefix`, same
init, same batches, same steps; AdamW with warmup + cosine (kslm.optim.schedules):
    causal          loss on the continuation tokens only (Su's control)
    prefix          prefix length = </s> + prompt + \\n (the prompt attends both ways), loss on the continuation only
    causal_all      causal, loss on every token (how a decoder is usually trained; same FLOPs, more targets)
kslm's own `kslm fit --model.backbone.mask prefix` draws the prefix length uniformly per packed block (lm.py);
here the task fixes it at the prompt boundary, as in Su's input→output setup, so a training loop over the pairs
is used instead of the packed-text data module. Reported: held-out loss on the continuation tokens (all; the first
8; the rest), each model evaluated with its own mask.
"""

import argparse
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

from _common import RESULTS, no_grad, print_tables, save, table_flag
from _plots import figure, figures_after_run, plot_flag, plot_stored

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "chinese_poetry" / "corpus.txt"
PAD, UNK, EOS, N_SPECIAL = 0, 1, 3, 5  # kslm.data.tokenizer's fixed ids
VARIANTS = {"causal": ("causal", False), "prefix": ("prefix", False), "causal_all": ("causal", True)}
STORED = [RESULTS / "prefix_vs_causal.json"]


def read_pairs(path: Path, max_prompt: int = 32):
    pairs = []
    for work in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [ln for ln in work.strip().split("\n") if ln.strip()]
        if len(lines) < 3 or len(lines[1]) > max_prompt:  # header, prompt line, at least one continuation line
            continue
        pairs.append((lines[1], "\n".join(lines[2:])))
    return pairs


class Data:
    def __init__(self, seq_len: int, vocab: int, n_eval: int):
        pairs = read_pairs(CORPUS)
        random.Random(0).shuffle(pairs)
        n_held = len(pairs) // 20
        self.train_pairs, held = pairs[n_held:], pairs[:n_held]
        counts = Counter(c for p, c in self.train_pairs for c in p + "\n" + c)
        self.itos = [c for c, _ in counts.most_common(vocab - N_SPECIAL)]
        self.stoi = {c: i + N_SPECIAL for i, c in enumerate(self.itos)}
        self.seq_len, self.vocab = seq_len, N_SPECIAL + len(self.itos)
        self.eval_batch = self.encode(held[:n_eval])
        covered = sum(n for c, n in counts.items() if c in self.stoi) / sum(counts.values())
        self.stats = {"pairs_train": len(self.train_pairs), "pairs_heldout": n_held, "pairs_eval": n_eval,
                      "vocab": self.vocab, "train_char_coverage": covered,
                      "mean_prompt_chars": sum(len(p) for p, _ in self.train_pairs) / len(self.train_pairs)}

    def encode(self, pairs):
        """→ ids [B, T+1] (right-padded), prefix lengths [B] (</s> + prompt + \\n), real-token mask [B, T+1]."""
        import torch

        rows, prefix = [], []
        for p, c in pairs:
            ids = [EOS] + [self.stoi.get(ch, UNK) for ch in p + "\n"]
            prefix.append(len(ids))
            ids += [self.stoi.get(ch, UNK) for ch in c] + [EOS]
            rows.append(ids[: self.seq_len + 1])
        ids = torch.full((len(rows), self.seq_len + 1), PAD)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, torch.tensor(prefix), ids != PAD

    def batches(self, batch_size: int, seed: int):
        rng = random.Random(seed)
        while True:
            order = list(range(len(self.train_pairs)))
            rng.shuffle(order)
            for i in range(0, len(order) - batch_size + 1, batch_size):
                yield self.encode([self.train_pairs[j] for j in order[i : i + batch_size]])


def losses(model, batch, mask_kind: str, all_tokens: bool):
    """Per-target cross-entropy [B, T] (0 where not a target) and the continuation / loss-target masks."""
    import torch
    from torch.nn import functional as F

    ids, prefix, real = batch
    x, y = ids[:, :-1], ids[:, 1:]
    pos = torch.arange(x.shape[1])[None]
    cont = (pos >= prefix[:, None] - 1) & real[:, 1:]  # targets inside the continuation (+ the closing </s>)
    target = real[:, 1:] if all_tokens else cont
    h = model(x, attention_mask=real[:, :-1].long(), prefix_lengths=prefix if mask_kind == "prefix" else None)
    ce = F.cross_entropy(model.logits(h).float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    return ce * target, cont, target


@no_grad
def evaluate(model, data, mask_kind: str, first: int = 8):
    import torch

    model.eval()
    ids, prefix, real = data.eval_batch
    out = {"all": [0.0, 0], f"first{first}": [0.0, 0], "rest": [0.0, 0]}
    for i in range(0, ids.shape[0], 100):
        b = (ids[i : i + 100], prefix[i : i + 100], real[i : i + 100])
        ce, cont, _ = losses(model, b, mask_kind, all_tokens=True)
        k = torch.arange(ce.shape[1])[None] - (b[1][:, None] - 1)  # index of the target within the continuation
        for name, sel in (("all", cont), (f"first{first}", cont & (k < first)), ("rest", cont & (k >= first))):
            out[name][0] += ce[sel].sum().item()
            out[name][1] += int(sel.sum())
    model.train()
    return {name: s / max(n, 1) for name, (s, n) in out.items()}


def train_variant(name: str, data: Data, a, seed: int) -> dict:
    import torch

    from kslm.nn.backbone import Backbone, BackboneConfig
    from kslm.optim.schedules import warmup_decay

    mask_kind, all_tokens = VARIANTS[name]
    torch.manual_seed(seed)  # same init for every variant (the mask owns no parameters)
    cfg = BackboneConfig(block="transformer", vocab_size=data.vocab, d_model=a.d_model, n_layers=a.layers,
                         n_heads=a.heads, norm="pre", mask=mask_kind, tie_embeddings=True, tied_init="swap",
                         max_length=data.seq_len)
    model = Backbone(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = warmup_decay(opt, a.warmup, a.steps)
    batches = data.batches(a.batch_size, seed)  # same batches for every variant
    curve, t0, n_targets, n_tokens = [], time.time(), 0, 0
    for step in range(1, a.steps + 1):
        ce, _, target = losses(model, next(batches), mask_kind, all_tokens)
        loss = ce.sum() / target.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        n_targets += int(target.sum())
        n_tokens += target.shape[0] * target.shape[1]
        if step % a.eval_every == 0 or step == a.steps:
            curve.append((step, evaluate(model, data, mask_kind)))
            print(f"{name} seed {seed} step {step}: train {loss.item():.3f}, held-out continuation {curve[-1][1]['all']:.4f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr)
    return {"variant": name, "seed": seed, "mask": mask_kind, "loss_on": "all tokens" if all_tokens else "continuation",
            "params": sum(p.numel() for p in model.parameters()), "curve": curve, "final": curve[-1][1],
            "train_targets": n_targets, "train_positions": n_tokens, "seconds": time.time() - t0}


def table(runs) -> str:
    lines = ["| variant | mask | loss on (training) | seed | held-out continuation loss | first 8 tokens | rest | vs causal "
             "| curve (all) | time |", "|---|---|---|---|---:|---:|---:|---:|---|---:|"]
    base = {r["seed"]: r["final"]["all"] for r in runs if r["variant"] == "causal"}
    for r in runs:
        f = r["final"]
        rel = f"{100 * (f['all'] - base[r['seed']]) / base[r['seed']]:+.2f} %" if r["seed"] in base else "–"
        curve = " → ".join(f"{c['all']:.3f}" for _, c in r["curve"])
        lines.append(f"| {r['variant']} | {r['mask']} | {r['loss_on']} | {r['seed']} | {f['all']:.4f} | {f['first8']:.4f} | "
                     f"{f['rest']:.4f} | {rel} | {curve} | {r['seconds']:.0f} s |")
    for name in dict.fromkeys(r["variant"] for r in runs):
        rs = [r for r in runs if r["variant"] == name]
        m = {k: sum(r["final"][k] for r in rs) / len(rs) for k in ("all", "first8", "rest")}
        rel = [100 * (r["final"]["all"] - base[r["seed"]]) / base[r["seed"]] for r in rs if r["seed"] in base]
        rel_s = f"{sum(rel) / len(rel):+.2f} %" if rel else "–"
        lines.append(f"| **{name}** | {rs[0]['mask']} | {rs[0]['loss_on']} | mean of {len(rs)} | **{m['all']:.4f}** | "
                     f"{m['first8']:.4f} | {m['rest']:.4f} | {rel_s} | | |")
    return "\n".join(lines)


def stored_table(payload) -> str:
    return table(payload["runs"])


VARIANT_COLOURS = {"causal": "C0", "prefix": "C3", "causal_all": "C2"}


def figures(payload):
    """Held-out continuation loss against the step for every variant and seed, and each variant's paired difference
    from the causal decoder of the same seed (in %)."""
    runs = payload["runs"]
    seeds = sorted({r["seed"] for r in runs})
    fig, (ax, ax2) = figure(2)
    for r in runs:
        style = ("-", "--", ":", "-.")[seeds.index(r["seed"]) % 4]
        c = VARIANT_COLOURS.get(r["variant"])
        ax.plot([s for s, _ in r["curve"]], [v["all"] for _, v in r["curve"]], marker="o", linestyle=style, color=c,
                label=f"{r['variant']}, seed {r['seed']}")
        base = next((b for b in runs if b["variant"] == "causal" and b["seed"] == r["seed"]), None)
        if base and r["variant"] != "causal":
            ref = dict((s, v["all"]) for s, v in base["curve"])
            ax2.plot([s for s, _ in r["curve"]], [100 * (v["all"] / ref[s] - 1) for s, v in r["curve"]], marker="o",
                     linestyle=style, color=c, label=f"{r['variant']}, seed {r['seed']}")
    ax.set(xlabel="step", ylabel="held-out continuation loss (nats/char)", title="Decoder-only vs prefix LM, equal compute")
    ax.legend(fontsize=7)
    ax2.axhline(0, color=VARIANT_COLOURS["causal"], linewidth=1, label="causal (reference)")
    ax2.set(xlabel="step", ylabel="vs causal, same seed (%)", title="Paired difference (> 0: worse than causal)")
    ax2.legend(fontsize=7)
    yield "curves", fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=3000, help="most frequent characters kept (+ specials); the rest → <unk>")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-pairs", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1234, 1235], help="init + batch-order seeds")
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "prefix_vs_causal.json"))
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

    torch.set_num_threads(1)
    t0 = time.time()
    data = Data(a.seq_len, a.vocab, a.eval_pairs)
    out = Path(a.out).resolve()
    payload = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "command": " ".join(["python", "experiments/prefix_vs_causal.py", *sys.argv[1:]]), "args": vars(a),
               "data": data.stats, "runs": []}
    for seed in a.seeds:
        for name in a.variants:
            payload["runs"].append(train_variant(name, data, a, seed))
            save(out, payload)
    payload["seconds"] = time.time() - t0
    save(out, payload)
    figures_after_run(payload, out, figures, a.figures)
    print(table(payload["runs"]))
    if not all(math.isfinite(r["final"]["all"]) for r in payload["runs"]):
        sys.exit("a run ended with a non-finite loss")


if __name__ == "__main__":
    main()
