"""SDPA backends under kslm's own Backbone: flash-path timing, exactness, padding and GAU, on one device.

    PYTHONPATH=. python3 bench/gpu_attention.py --device cuda --out bench/results/gpu_attention.json
    PYTHONPATH=. python bench/gpu_attention.py --device cpu --d 64 --heads 4 --layers 1 --seqs 64,128 --batch 2 \
        --out /tmp/ga.json                                                            (CPU smoke test, < 1 min)
    PYTHONPATH=. python bench/gpu_attention.py --table     # the summary of the stored results again, computing nothing

What it measures (kslm.nn.attention.attend calls F.scaled_dot_product_attention with is_causal=True and no mask
tensor when there is no padding, and with a boolean attn_mask [B, 1, T, S] otherwise):

1. Flash path. Backbone(block="transformer", norm="pre", attention="softmax", mask="causal", d_model=--d,
   n_heads=--heads, n_layers=--layers, vocab --vocab): forward (hidden → Backbone.logits) + cross-entropy
   against random targets + backward, under torch.autocast(bf16) on CUDA (fp32 on CPU; --dtype overrides), for
   each T in --seqs at batch --batch. Median of --iters timed steps after --warmup steps (CUDA events), under
   three sdpa_kernel settings: default selection, FLASH_ATTENTION only, MATH only. A setting that raises
   (no kernel, OOM) is recorded as its error string. Per T: ms per fwd+bwd, tokens/s, peak memory
   (max_memory_allocated, reset per measurement) and the default/math speedup; plus the backend the default
   selection picks for those q/k/v shapes (torch._fused_sdp_choice, private API: best effort).
2. Exactness at the smallest T: logits and the embedding-weight gradient under forced FLASH, default and
   forced MATH (same weights, same batch), relative error ‖a − b‖ / ‖b‖ against MATH in the same dtype and
   against an fp32 MATH run without autocast.
3. Padding: a right-padded batch (attention_mask zeros at the end of rows 1..B−1) forward under default, FLASH,
   EFFICIENT_ATTENTION and MATH: which accept the mask tensor, and the relative error of the real positions'
   logits against each row run alone, unpadded, under the same setting (in the bench dtype and in fp32).
4. GAU: block="gau", 2 × --layers layers, qk_dim 128, expansion 2 (value dim 2d ≠ 128, so no flash), SiLU,
   softmax attention: fwd+bwd timing under default, MATH and EFFICIENT_ATTENTION at the same T.

The last lines of stdout are a markdown summary; every number goes to --out as JSON (written atomically by kslm.io.write_json).
"""

import argparse
import contextlib
import gc
import statistics
import time
from datetime import datetime, timezone

from machine import RESULTS, print_tables, table_flag

from kslm.io import write_json

# sdpa_kernel settings: None = torch's default selection, else the one torch.nn.attention.SDPBackend allowed
SETTINGS = {"default": None, "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}
STORED = [RESULTS / "gpu_attention_h100.json"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="autocast dtype (bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seqs", default="1024,2048,4096,8192")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-gau", action="store_true")
    p.add_argument("--out", default="bench/results/gpu_attention.json")
    table_flag(p, STORED)
    return p.parse_args(argv)


def short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def free(device):
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, dtype):
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def backend(setting):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return contextlib.nullcontext() if SETTINGS[setting] is None else sdpa_kernel([getattr(SDPBackend, SETTINGS[setting])])


def rel(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def make_model(args, device, block):
    import torch

    from kslm.nn.backbone import Backbone, BackboneConfig

    torch.manual_seed(args.seed)
    cfg = BackboneConfig(block=block, vocab_size=args.vocab, d_model=args.d, n_heads=args.heads,
                         n_layers=args.layers * (2 if block == "gau" else 1), norm="pre", attention="softmax",
                         mask="causal", position="rope", activation="silu" if block == "gau" else "gelu",
                         qk_dim=128, expansion=2, tie_embeddings=True, tied_init="none",
                         max_length=max(args.seq_list), dropout=0.0)
    return Backbone(cfg).to(device), cfg


def batch(args, device, T, B=None):
    import torch

    g = torch.Generator().manual_seed(args.seed + T)
    B = B or args.batch
    ids = torch.randint(0, args.vocab, (B, T), generator=g)
    targets = torch.randint(0, args.vocab, (B, T), generator=g)
    return ids.to(device), targets.to(device)


def loss_of(model, ids, targets, attention_mask=None):
    from torch.nn import functional as F

    logits = model.logits(model(ids, attention_mask=attention_mask))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)), logits


def time_step(model, ids, targets, device, dtype, setting, iters, warmup):
    """ms per forward + loss + backward (median), peak memory; or {"error": ...}."""
    import torch

    out = {}
    try:
        with backend(setting):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            for i in range(warmup + iters):
                model.zero_grad(set_to_none=True)
                sync(device)
                if device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                t0 = time.perf_counter()
                with autocast(device, dtype):
                    loss, _ = loss_of(model, ids, targets)
                loss.backward()
                if device.type == "cuda":
                    end.record()
                    end.synchronize()
                    ms = start.elapsed_time(end)
                else:
                    ms = (time.perf_counter() - t0) * 1e3
                del loss
                if i >= warmup:
                    times.append(ms)
            out["ms"] = statistics.median(times)
            out["ms_min"] = min(times)
            out["tokens_per_s"] = ids.numel() / (out["ms"] / 1e3)
            out["loss_finite"] = True
            if device.type == "cuda":
                out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    except Exception as e:  # no kernel for this setting, OOM, ...
        out = {"error": short_error(e)}
    model.zero_grad(set_to_none=True)
    free(device)
    return out


def default_choice(cfg, device, dtype, B, T):
    """Backend the default selection picks for this block's q/k/v shapes (torch._fused_sdp_choice, private)."""
    import torch
    from torch.nn.attention import SDPBackend

    if cfg.block == "transformer":
        h, s, e = cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.d_model // cfg.n_heads
    else:
        h, s, e = 1, cfg.qk_dim, cfg.expansion * cfg.d_model
    try:
        dt = dtype if device.type == "cuda" else torch.float32
        q = torch.empty(B, h, T, s, device=device, dtype=dt)
        v = torch.empty(B, h, T, e, device=device, dtype=dt)
        return SDPBackend(torch._fused_sdp_choice(q, q, v, is_causal=True)).name
    except Exception as e:
        return f"unknown ({short_error(e)})"


def timing(args, device, dtype, block, settings):
    model, cfg = make_model(args, device, block)
    rows = []
    for T in args.seq_list:
        ids, targets = batch(args, device, T)
        row = {"block": block, "T": T, "batch": args.batch, "default_picks": default_choice(cfg, device, dtype, args.batch, T)}
        for s in settings:
            row[s] = time_step(model, ids, targets, device, dtype, s, args.iters, args.warmup)
            print(f"  {block} T={T} {s}: {row[s]}", flush=True)
        if "ms" in row["default"] and "ms" in row["math"]:
            row["speedup_default_over_math"] = row["math"]["ms"] / row["default"]["ms"]
        rows.append(row)
        del ids, targets
        free(device)
    info = {"config": cfg.to_dict(), "parameters": model.num_parameters()}
    del model
    free(device)
    return rows, info


def run_once(model, ids, targets, device, dtype, setting, attention_mask=None, grad=True):
    import torch

    with backend(setting):
        model.zero_grad(set_to_none=True)
        with autocast(device, dtype), torch.set_grad_enabled(grad):
            loss, logits = loss_of(model, ids, targets, attention_mask)
        if grad:
            loss.backward()
    out = (logits.detach().float(), model.embed.weight.grad.detach().clone() if grad else None)
    model.zero_grad(set_to_none=True)
    return out


def exactness(args, device, dtype):
    import torch

    T = args.seq_list[0]
    model, _ = make_model(args, device, "transformer")
    ids, targets = batch(args, device, T)
    runs, res = {}, {"T": T, "batch": args.batch, "dtype": str(dtype)}
    for s in ("flash", "default", "math"):
        try:
            runs[s] = run_once(model, ids, targets, device, dtype, s)
        except Exception as e:
            res[f"{s}_error"] = short_error(e)
        free(device)
    ref = run_once(model, ids, targets, device, torch.float32, "math")
    for s, (logits, grad) in runs.items():
        if s != "math" and "math" in runs:
            res[f"{s}_vs_math"] = {"logits": rel(logits, runs["math"][0]), "embed_grad": rel(grad, runs["math"][1])}
        res[f"{s}_vs_fp32_math"] = {"logits": rel(logits, ref[0]), "embed_grad": rel(grad, ref[1])}
    del model, runs, ref
    free(device)
    return res


def padding(args, device, dtype):
    import torch

    T, B = args.seq_list[0], max(args.batch, 2)
    model, _ = make_model(args, device, "transformer")
    ids, targets = batch(args, device, T, B)
    lengths = [T] + [max(1, T - (i * T) // (2 * B)) for i in range(1, B)]  # row 0 full, the rest end in padding
    mask = torch.zeros(B, T, dtype=torch.long, device=device)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    res = {"T": T, "batch": B, "lengths": lengths}
    for dt in dict.fromkeys([dtype, torch.float32]):
        key = "bench_dtype" if dt == dtype else "fp32"
        res[key] = {"dtype": str(dt)}
        for s in SETTINGS:
            try:
                padded, _ = run_once(model, ids, targets, device, dt, s, attention_mask=mask, grad=False)
                errs = []
                for i, n in enumerate(lengths):
                    alone, _ = run_once(model, ids[i:i + 1, :n], targets[i:i + 1, :n], device, dt, s, grad=False)
                    errs.append(rel(padded[i, :n], alone[0]))
                res[key][s] = {"ok": True, "max_rel_err_vs_alone": max(errs), "rel_err_per_row": errs}
            except Exception as e:
                res[key][s] = {"ok": False, "error": short_error(e)}
            free(device)
    del model
    free(device)
    return res


def cell(m, key="ms", fmt="{:.1f}"):
    if m is None:
        return "-"
    if "error" in m:
        return "OOM" if "OutOfMemory" in m["error"] or "out of memory" in m["error"] else "err"
    return fmt.format(m[key]) if key in m else "-"


def summary(data):
    lines = [f"## SDPA backends in kslm Backbone — {data['device_name']}, torch {data['torch']}, {data['dtype']}", "",
             "| block | T | B | default picks | default ms | flash ms | eff ms | math ms | tok/s default | "
             "peak GB def/flash/math | default÷math speedup |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["timing"]:
        peak = "/".join(cell(r.get(s), "peak_mem_gb", "{:.1f}") for s in ("default", "flash", "math"))
        sp = r.get("speedup_default_over_math")
        lines.append(f"| {r['block']} | {r['T']} | {r['batch']} | {r['default_picks'][:24]} | {cell(r.get('default'))} | "
                     f"{cell(r.get('flash'))} | {cell(r.get('efficient'))} | {cell(r.get('math'))} | "
                     f"{cell(r.get('default'), 'tokens_per_s', '{:.0f}')} | {peak} | {f'{sp:.2f}×' if sp else '-'} |")
    ex = data.get("exactness", {})
    lines += ["", f"Exactness (T={ex.get('T')}, rel. err ‖a−b‖/‖b‖, logits / embed grad):"]
    for k, v in ex.items():
        if isinstance(v, dict):
            lines.append(f"- {k}: {v['logits']:.2e} / {v['embed_grad']:.2e}")
        elif k.endswith("_error"):
            lines.append(f"- {k}: {v}")
    pad = data.get("padding", {})
    lines += ["", f"Padding (T={pad.get('T')}, lengths {pad.get('lengths')}; max rel. err of real positions vs row alone):"]
    for key in ("bench_dtype", "fp32"):
        if key in pad:
            parts = [f"{s} " + (f"ok {m['max_rel_err_vs_alone']:.1e}" if m["ok"] else "FAILS")
                     for s, m in pad[key].items() if s != "dtype"]
            lines.append(f"- {pad[key]['dtype']}: " + ", ".join(parts))
    lines.append(f"\nfull results: {data['out']} ({data['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.table is not None:
        print_tables(args.table, STORED, summary)
        return
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.seq_list = sorted(int(s) for s in args.seqs.split(","))
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    t0 = time.perf_counter()
    data = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dtype": str(dtype),
        "autocast": dtype != torch.float32,
        "shapes": {"d_model": args.d, "n_heads": args.heads, "head_dim": args.d // args.heads, "layers": args.layers,
                   "gau_layers": 2 * args.layers, "gau_qk_dim": 128, "gau_v_dim": 2 * args.d, "vocab": args.vocab,
                   "seqs": args.seq_list, "batch": args.batch},
        "timing_protocol": {"iters": args.iters, "warmup": args.warmup, "statistic": "median",
                            "step": "forward + logits + cross-entropy + backward (no optimizer step)"},
        "out": args.out,
    }
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    print(f"device {data['device_name']}, torch {data['torch']}, dtype {data['dtype']}", flush=True)

    def save():
        data["elapsed_s"] = time.perf_counter() - t0
        write_json(args.out, data)

    print("1. transformer timing", flush=True)
    data["timing"], data["transformer_model"] = timing(args, device, dtype, "transformer", ("default", "flash", "math"))
    save()
    print("2. exactness", flush=True)
    data["exactness"] = exactness(args, device, dtype)
    save()
    print("3. padding", flush=True)
    data["padding"] = padding(args, device, dtype)
    save()
    if not args.skip_gau:
        print("4. GAU timing", flush=True)
        gau_rows, data["gau_model"] = timing(args, device, dtype, "gau", ("default", "math", "efficient"))
        data["timing"] += gau_rows
    save()
    print()
    print(summary(data))


if __name__ == "__main__":
    main()
