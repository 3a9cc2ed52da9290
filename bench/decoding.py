"""Decoding and loss benchmarks for the extraction heads (issue 3).

1. Span decoding (GlobalPointer / Efficient GlobalPointer logits, [N, T, L, L]): kslm's vectorised
   `nonzero` on thresholded logits vs a naive per-(type, i, j) Python loop, on 1,000 sentences.
2. GPLinker decoding: `kslm.heads.gplinker.decode_triples` (vectorised sparse join) vs the post's loop
   (bojone/GPLinker: np.where for entities, then for every subject × object the predicate sets of the head and
   tail grids intersected), on 1,000 sentences with DuIE's 48 predicates.
3. Sparse vs dense multilabel categorical cross-entropy at 50+ predicates (GPLinker's head grid): forward +
   backward time, label memory, and the peak RSS growth of a process that runs only that loss.

Logits are synthetic but shaped like a trained model's: every cell ≈ N(−8, 2²) (so a few false positives appear),
and each sentence's gold cells set to +8. Both decoders must return identical results; the script checks that.

    PYTHONPATH=. python bench/decoding.py [--out bench/results/decoding.json]
    PYTHONPATH=. python bench/decoding.py --table          # the tables of the stored results again, computing nothing
"""

import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np
from machine import RESULTS, print_tables, table_flag

from kslm.io import write_json

STORED = [RESULTS / "decoding.json"]


def gold_spans(rng, n, types, length, per_sentence=3):
    out = []
    for _ in range(n):
        spans = set()
        for _ in range(per_sentence):
            i = int(rng.integers(1, length - 4))
            spans.add((int(rng.integers(types)), i, i + int(rng.integers(0, 4))))
        out.append(spans)
    return out


def span_logits(rng, golds, types, length):
    import torch

    logits = torch.from_numpy(rng.normal(-8.0, 2.0, (len(golds), types, length, length)).astype(np.float32))
    logits.masked_fill_(torch.ones(length, length, dtype=torch.bool).tril(-1), float("-inf"))  # tril mask
    for b, spans in enumerate(golds):
        for t, i, j in spans:
            logits[b, t, i, j] = 8.0
    return logits


def decode_spans_vectorised(logits, threshold=0.0):
    hits = (logits > threshold).nonzero().tolist()
    out = [set() for _ in range(logits.shape[0])]
    for b, t, i, j in hits:
        out[b].add((t, i, j))
    return out


def decode_spans_naive(logits, threshold=0.0):
    out = []
    for sample in logits.tolist():
        spans = set()
        for t, grid in enumerate(sample):
            for i, row in enumerate(grid):
                for j in range(i, len(row)):
                    if row[j] > threshold:
                        spans.add((t, i, j))
        out.append(spans)
    return out


def decode_triples_post_loop(entity, head, tail, threshold=0.0):
    """bojone/GPLinker's extraction loop on numpy arrays (one sample at a time)."""
    results = []
    for e, h, t in zip(entity.numpy(), head.numpy(), tail.numpy(), strict=False):
        subjects, objects = set(), set()
        for kind, sh, st in zip(*np.where(e > threshold), strict=False):
            (subjects if kind == 0 else objects).add((int(sh), int(st)))
        found = set()
        for sh, st in subjects:
            for oh, ot in objects:
                p1s = np.where(h[:, sh, oh] > threshold)[0]
                p2s = np.where(t[:, st, ot] > threshold)[0]
                for p in set(p1s) & set(p2s):
                    found.add((sh, st, int(p), oh, ot))
        results.append(found)
    return results


def decode_triples_naive(entity, head, tail, threshold=0.0):
    """The same rule with a plain per-span Python loop (no numpy): the issue's 'naive per-span loop' baseline."""
    results = []
    for e, h, t in zip(entity.tolist(), head.tolist(), tail.tolist(), strict=False):
        spans = [[(i, j) for i, row in enumerate(grid) for j in range(i, len(row)) if row[j] > threshold] for grid in e]
        found = set()
        for sh, st in spans[0]:
            for oh, ot in spans[1]:
                for p in range(len(h)):
                    if h[p][sh][oh] > threshold and t[p][st][ot] > threshold:
                        found.add((sh, st, p, oh, ot))
        results.append(found)
    return results


def triple_logits(rng, n, predicates, length, per_sentence=2):
    import torch

    entity = torch.from_numpy(rng.normal(-8.0, 2.0, (n, 2, length, length)).astype(np.float32))
    entity.masked_fill_(torch.ones(length, length, dtype=torch.bool).tril(-1), float("-inf"))
    head = torch.from_numpy(rng.normal(-8.0, 2.0, (n, predicates, length, length)).astype(np.float32))
    tail = torch.from_numpy(rng.normal(-8.0, 2.0, (n, predicates, length, length)).astype(np.float32))
    for b in range(n):
        for _ in range(per_sentence):
            sh = int(rng.integers(1, length - 8))
            st = sh + int(rng.integers(0, 3))
            oh = int(rng.integers(1, length - 8))
            ot = oh + int(rng.integers(0, 3))
            p = int(rng.integers(predicates))
            entity[b, 0, sh, st] = entity[b, 1, oh, ot] = 8.0
            head[b, p, sh, oh] = tail[b, p, st, ot] = 8.0
    return entity, head, tail


def timed(fn, *args, repeat=3):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


LOSS_WORKER = """
import resource, sys, time, torch
from kslm.losses import multilabel_categorical_crossentropy, sparse_multilabel_categorical_crossentropy
kind, B, P, L, K = sys.argv[1], *map(int, sys.argv[2:6])
g = torch.Generator().manual_seed(0)
logits = torch.randn(B, P, L * L, generator=g).requires_grad_()
idx = torch.randint(1, L * L, (B, P, K), generator=g)
def rss_kib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
before = rss_kib()  # peak growth = ru_maxrss (peak, KiB) − resident size before the loss steps
times = []
for _ in range(3):
    t = time.perf_counter()
    if kind == "dense":
        labels = torch.zeros(B, P, L * L).scatter_(-1, idx, 1.0)
        loss = multilabel_categorical_crossentropy(y_true=labels, y_pred=logits).sum(1).mean()
    else:
        loss = sparse_multilabel_categorical_crossentropy(y_true=idx, y_pred=logits, mask_zero=True).sum(1).mean()
    loss.backward()
    logits.grad = None
    times.append(time.perf_counter() - t)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(min(times), (after - before) / 1024)
"""


def loss_case(kind, B, P, L, K):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", LOSS_WORKER, kind, str(B), str(P), str(L), str(K)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--types", type=int, default=10, help="entity types (CLUENER has 10)")
    ap.add_argument("--predicates", type=int, default=48, help="relation predicates (DuIE has 48/49)")
    ap.add_argument("--out", default="bench/results/decoding.json")
    table_flag(ap, STORED)
    args = ap.parse_args()
    if args.table is not None:
        print_tables(args.table, STORED, markdown)
        return
    import torch

    from kslm.heads.gplinker import decode_triples

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args)}
    # the loss cases first: a child forked from a process holding GBs of logits inherits that as its ru_maxrss
    result["loss"] = []
    for P, L in ((50, 128), (100, 128)):
        row = {"batch": 16, "predicates": P, "length": L, "positives_per_row": 4}
        for kind in ("dense", "sparse"):
            seconds, rss = loss_case(kind, 16, P, L, 4)
            row[f"{kind}_s"], row[f"{kind}_peak_rss_growth_mib"] = seconds, rss
        row["dense_label_mib"] = 16 * P * L * L * 4 / 2**20
        row["sparse_label_mib"] = 16 * P * 4 * 8 / 2**20
        result["loss"].append(row)

    golds = gold_spans(rng, args.sentences, args.types, args.length)
    logits = span_logits(rng, golds, args.types, args.length)
    t_vec, vec = timed(decode_spans_vectorised, logits)
    t_naive, naive = timed(decode_spans_naive, logits, repeat=1)
    assert vec == naive, "span decoders disagree"
    recall = sum(len(g & v) for g, v in zip(golds, vec, strict=False)) / sum(len(g) for g in golds)
    result["spans"] = {"vectorised_s": t_vec, "naive_loop_s": t_naive, "speedup": t_naive / t_vec,
                       "spans_found": sum(map(len, vec)), "gold_recall": recall}

    entity, head, tail = triple_logits(rng, args.sentences, args.predicates, args.length)
    t_vec, vec = timed(decode_triples, entity, head, tail)
    t_loop, loop = timed(decode_triples_post_loop, entity, head, tail, repeat=1)
    t_naive, naive = timed(decode_triples_naive, entity, head, tail, repeat=1)
    assert vec == loop == naive, "GPLinker decoders disagree"
    result["gplinker"] = {"vectorised_s": t_vec, "post_loop_s": t_loop, "naive_loop_s": t_naive,
                          "speedup_vs_naive": t_naive / t_vec, "speedup_vs_post_loop": t_loop / t_vec,
                          "triples_found": sum(map(len, vec))}

    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    write_json(args.out, result)
    print(markdown(result))


def markdown(result: dict) -> str:
    a, s, g = result["args"], result["spans"], result["gplinker"]
    lines = [f"| decoding ({a['sentences']} sentences, L={a['length']}) | kslm vectorised s | naive per-span loop s | "
             "speedup | post's numpy loop s | speedup |", "|---|---:|---:|---:|---:|---:|",
             f"| GP/EGP spans, {a['types']} types | {s['vectorised_s']:.3f} | {s['naive_loop_s']:.3f} | "
             f"{s['speedup']:.0f}× | – | – |",
             f"| GPLinker triples, {a['predicates']} predicates | {g['vectorised_s']:.3f} | {g['naive_loop_s']:.3f} | "
             f"{g['speedup_vs_naive']:.0f}× | {g['post_loop_s']:.3f} | {g['speedup_vs_post_loop']:.1f}× |", "",
             "| MCCE, batch 16 | dense s | sparse s | dense labels MiB | sparse labels MiB | dense RSS growth MiB | "
             "sparse RSS growth MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["loss"]:
        lines.append(f"| P={r['predicates']}, L={r['length']} | {r['dense_s']:.3f} | {r['sparse_s']:.3f} | "
                     f"{r['dense_label_mib']:.0f} | {r['sparse_label_mib']:.3f} | {r['dense_peak_rss_growth_mib']:.0f} | "
                     f"{r['sparse_peak_rss_growth_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
