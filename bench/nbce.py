"""NBCE decoding benchmark (issue 4): the KV-cached batch loop against a naive recompute and the reference loop.

1. Speed at --new answer tokens with --contexts contexts: answer tokens/s of
   - kslm's cached loop (`kslm.nn.nbce.nbce_generate`) over a kslm Backbone and over HF `LlamaForCausalLM`,
   - the naive loop (the same step, every row recomputed from scratch at every step: use_cache=False),
   - the reference loop (bojone/NBCE test.py, final revision: HF's own cache and TopPLogitsWarper, full logits, no
     position_ids), over the same HF model and the same left-padded batch.
   All runs produce the same tokens (checked).
2. Scaling with the number of contexts (1, 2, 4, 8, 16), kslm Backbone, each in a fresh process: prefill time,
   per-token decode latency (median step), KV-cache bytes and the peak resident-set growth during the loop (VmHWM,
   reset through /proc/self/clear_refs just before it, minus VmRSS at that point; Linux only).

Random weights (no download); end-of-sequence disabled so every run decodes exactly --new tokens.

    PYTHONPATH=. python bench/nbce.py [--threads 1] [--out bench/results/nbce.json]
    PYTHONPATH=. python bench/nbce.py --table          # the tables of the stored results again, computing nothing
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RESULTS, print_tables, table_flag, vm_rss_kib  # noqa: E402

from kslm.io import write_json  # noqa: E402

STORED = [RESULTS / "nbce.json"]


def vm_hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


class Timed:
    """Wraps a CausalLM: wall time of every call (the first is the prefill) and the last state (the KV cache)."""

    def __init__(self, lm):
        self.lm, self.times, self.state = lm, [], None

    def __call__(self, *args):
        t = time.perf_counter()
        logits, self.state = self.lm(*args)
        self.times.append(time.perf_counter() - t)
        return logits, self.state


def kslm_model(args):
    import torch

    from kslm.nn import Backbone, BackboneConfig

    torch.manual_seed(args.seed)
    cfg = BackboneConfig(d_model=args.d, n_layers=args.layers, n_heads=args.heads, vocab_size=args.vocab,
                         max_length=4096, tie_embeddings=False)
    return Backbone(cfg).eval()


def hf_model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d, intermediate_size=4 * args.d, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.heads, max_position_embeddings=4096,
                      initializer_range=0.2, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def prompts_for(n, args):
    """Row 0 (no context) is short; the n context rows have lengths spread over [prompt/2, prompt]."""
    import torch

    g = torch.Generator().manual_seed(args.seed)
    lengths = [args.prompt // 8] + [args.prompt // 2 + (args.prompt // 2) * i // max(n - 1, 1) for i in range(n)]
    return [torch.randint(5, args.vocab, (m,), generator=g).tolist() for m in lengths]


def timed_run(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def speed(args) -> dict:
    """The naive loop runs once (it is ~10× slower); the cached and reference loops run --repeats times, interleaved,
    and keep their fastest run (the shared VM's noise only ever adds time)."""
    from nbce_reference import reference_loop

    from kslm.nn.nbce import BackboneLM, HFCausalLM, left_pad, nbce_generate

    prompts = prompts_for(args.contexts, args)
    models = [("kslm", kslm_model(args), BackboneLM)]
    try:
        models.append(("hf-llama", hf_model(args), HFCausalLM))
    except ImportError:
        print("transformers not installed: HF rows skipped", file=sys.stderr)
    runs = {}
    for name, model, wrap in models:
        lm = wrap(model)
        ids, mask = left_pad(prompts)
        loops = {f"{name}-cached": lambda: nbce_generate(lm, prompts, [], args.new, temperature=0.0)[0]}  # noqa: B023
        if name == "hf-llama":
            loops["hf-llama-reference"] = lambda: reference_loop(model, ids, mask, args.new)  # noqa: B023
        for _ in range(args.repeats):
            for loop, fn in loops.items():
                tokens, s = timed_run(fn)
                runs.setdefault(loop, []).append((s, tokens))
        tokens, s = timed_run(lambda: nbce_generate(lm, prompts, [], args.new, temperature=0.0, use_cache=False)[0])  # noqa: B023
        runs[f"{name}-naive"] = [(s, tokens)]
        print({k: [round(s, 2) for s, _ in v] for k, v in runs.items()}, file=sys.stderr)
    rows = {}
    for name, rs in runs.items():
        s, tokens = min(rs, key=lambda r: r[0])
        base = "kslm" if name.startswith("kslm") else "hf-llama"
        assert len(tokens) == args.new
        rows[name] = {"seconds": s, "all_seconds": [r[0] for r in rs], "tokens_per_s": args.new / s,
                      "same_tokens_as_cached": tokens == runs[f"{base}-cached"][0][1]}
    return rows


def scaling_worker(args) -> dict:
    from kslm.nn.nbce import BackboneLM, nbce_generate

    model = kslm_model(args)
    prompts = prompts_for(args.contexts, args)
    lm = Timed(BackboneLM(model))
    with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the peak (VmHWM) to the current resident set
        f.write("5")
    rss0 = vm_rss_kib()
    nbce_generate(lm, prompts, [], args.new, temperature=0.0)
    peak = vm_hwm_kib()
    kv = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in lm.state.values())
    return {"contexts": args.contexts, "rows": len(prompts), "prefill_s": lm.times[0],
            "decode_ms_per_token": 1000 * statistics.median(lm.times[1:]), "kv_cache_mib": kv / 2**20,
            "peak_rss_growth_mib": (peak - rss0) / 1024, "padded_prompt": max(len(p) for p in prompts)}


def scaling(args) -> list:
    out = []
    for n in args.scaling:
        cmd = [sys.executable, __file__, "--worker", "--contexts", str(n)] + [
            f"--{k}={v}" for k, v in (("d", args.d), ("layers", args.layers), ("heads", args.heads), ("vocab", args.vocab),
                                      ("prompt", args.prompt), ("new", args.new), ("seed", args.seed),
                                      ("threads", args.threads))]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"scaling n={n}: {out[-1]}", file=sys.stderr)
    return out


def markdown(report: dict) -> str:
    a, sp = report["args"], report["speed"]
    lines = [f"d={a['d']}, layers={a['layers']}, heads={a['heads']}, vocab={a['vocab']}, {a['contexts']} contexts "
             f"(prompts {a['prompt'] // 2}–{a['prompt']} tokens, no-context row {a['prompt'] // 8}), {a['new']} new tokens, "
             f"{a['threads']} threads", "",
             "| loop | seconds (fastest run) | answer tokens/s | this ÷ cached (s) | same tokens as cached |",
             "|---|---:|---:|---:|---|"]
    for name, r in sp.items():
        base = "hf-llama" if name.startswith("hf-llama") else "kslm"
        ratio = r["seconds"] / sp[f"{base}-cached"]["seconds"]
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | {ratio:.2f}× | {r['same_tokens_as_cached']} |")
    lines += ["", "| contexts | rows | padded prompt | prefill s | decode ms/token | KV cache MiB | peak RSS growth MiB |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["scaling"]:
        lines.append(f"| {r['contexts']} | {r['rows']} | {r['padded_prompt']} | {r['prefill_s']:.3f} | "
                     f"{r['decode_ms_per_token']:.1f} | {r['kv_cache_mib']:.1f} | {r['peak_rss_growth_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--prompt", type=int, default=256, help="longest context prompt (tokens)")
    ap.add_argument("--new", type=int, default=64, help="answer tokens decoded")
    ap.add_argument("--contexts", type=int, default=8, help="contexts in the speed comparison")
    ap.add_argument("--scaling", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared 2-core VM, 2 threads stall)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="runs of the cached and reference loops (fastest kept)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "nbce.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    table_flag(ap, STORED)
    args = ap.parse_args(argv)
    if args.table is not None:
        print_tables(args.table, STORED, markdown)
        return
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(scaling_worker(args)))
        return
    t0 = time.perf_counter()
    report = {"when": datetime.now(timezone.utc).isoformat(timespec="minutes"),
              "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "args": {k: v for k, v in vars(args).items() if k not in ("out", "worker", "table")},
              "speed": speed(args), "scaling": scaling(args)}
    report["seconds"] = time.perf_counter() - t0
    write_json(args.out, report)
    print(markdown(report))


if __name__ == "__main__":
    main()
