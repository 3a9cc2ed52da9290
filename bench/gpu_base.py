"""GPU benchmark for a short loan: kslm Transformer-base and GAU-α-base against HF LlamaForCausalLM at equal parameters.

    PYTHONPATH=. python bench/gpu_base.py            # one H100/H200, under 8 minutes → bench/results/gpu_base.json + table
    PYTHONPATH=. python bench/gpu_base.py --smoke --out /tmp/gpu_base.json   # CPU, tiny, eager: the code paths
    PYTHONPATH=. python bench/gpu_base.py --table    # the stored tables again, computing nothing

Models (shapes from configs/lm/gau-alpha-base.yaml and configs/lm/transformer-base.yaml, vocabulary --vocab):
    kslm-transformer  12 blocks, d 768, 12 heads, FFN 3200 (GELU), Pre-Norm RMSNorm, RoPE, tied
    kslm-gau          24 GAU layers, d 768, s 128, e 1536, softmax_plus, Post-Norm RMSNorm (attention_kernel auto:
                      the linear-memory split-value SDPA path on CUDA)
    llama             LlamaForCausalLM, d 768, 12 layers, 12 heads, SwiGLU 2136 (≈ the same parameters), tied, sdpa
Each at T in --seqs with batch --tokens / T, in two modes: eager, and compiled (kslm: every residual sub-layer compiled
in place, as `--model.compile true` trains; Llama: torch.compile of the whole model, as HF users do). A step is
forward → cross-entropy (fp32 logits) → backward → AdamW (fused on CUDA, as kslm.optim builds it) → zero_grad,
under bf16 autocast with fp32 weights (bf16-mixed). Step time: median of --steps timed steps after --warmup
(the first warmup step of a compiled model is its compile time). FLOPs: kslm's analytic training count
(Backbone.flops_per_token: 6N + full T × T attention) and the same convention for Llama. MFU against the datasheet
bf16 dense peak (H100 / H200 SXM: 989 TFLOP/s) and against the best bf16 GEMM measured in the same run.
Then GAU-α-base's peak memory at batch 1 and T in --mem-seqs under attention_kernel dense and linear_memory
(linear in T for softmax_plus), and one compiled flex_attention call at the GAU shape (does it run?).
The run stops starting new measurements after --budget seconds; the JSON is rewritten after every measurement, so
a run cut short keeps what it measured.
"""

import argparse
import gc
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_base_report import markdown  # noqa: E402
from machine import RESULTS, machine_info, print_tables, table_flag  # noqa: E402

from kslm.io import write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STORED = [RESULTS / "gpu_base.json"]
MODELS = ("kslm-transformer", "kslm-gau", "llama")
DATASHEET_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense, SXM


def shapes(args) -> dict:
    """The base configs' backbone shapes (smoke: shrunk), vocabulary --vocab."""
    import yaml

    out = {}
    for name, file in (("kslm-transformer", "transformer-base.yaml"), ("kslm-gau", "gau-alpha-base.yaml")):
        bb = yaml.safe_load((REPO / "configs" / "lm" / file).read_text(encoding="utf-8"))["model"]["init_args"]["backbone"]
        bb.update(vocab_size=args.vocab, max_length=max(max(args.seqs), max(args.mem_seqs)))
        if args.smoke:
            bb.update(d_model=64, n_layers=2 if bb["block"] == "transformer" else 4, qk_dim=16, n_heads=4, d_ff=256)
        out[name] = bb
    t = out["kslm-transformer"]
    # SwiGLU (3 matrices) with the parameters of kslm's 2-matrix FFN: 3·d·I = 2·d·d_ff, I a multiple of 8
    out["llama"] = {"d": t["d_model"], "layers": t["n_layers"], "heads": t["n_heads"],
                    "intermediate": 8 * round(2 * t["d_ff"] / 3 / 8), "vocab": args.vocab}
    return out


def build(name: str, shape: dict, seq: int, compiled: bool, args):
    """→ (module, forward(ids) → logits, training FLOPs per token)."""
    import torch

    if name.startswith("kslm"):
        from kslm.nn import Backbone, BackboneConfig

        model = Backbone(BackboneConfig(**shape))
        model.set_execution(compile={"backend": args.compile_backend, "dynamic": False} if compiled else False)
        return model, lambda x: model.logits(model(x)), model.flops_per_token(seq)
    from throughput_models import llama_flops_per_token
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["d"], num_hidden_layers=shape["layers"],
                      num_attention_heads=shape["heads"], num_key_value_heads=shape["heads"],
                      intermediate_size=shape["intermediate"], max_position_embeddings=max(seq, 2048),
                      tie_word_embeddings=True, attn_implementation="sdpa", use_cache=False)
    model = LlamaForCausalLM(cfg)
    step_model = torch.compile(model, backend=args.compile_backend, dynamic=False) if compiled else model
    flops = llama_flops_per_token(shape["d"], shape["layers"], shape["heads"], shape["heads"], shape["intermediate"],
                                  shape["vocab"], seq)
    return model, lambda x: step_model(input_ids=x, use_cache=False).logits, flops


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def cleanup(device):
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_steps(model, forward, batch, seq, args, device, steps, warmup):
    """→ (step times s, first-step s, peak memory GiB or None, losses)."""
    import torch
    from torch.nn import functional as F

    model.to(device).train()
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **fused)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(args.vocab, (batch, seq + 1), generator=gen).to(device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cleanup(device)
    times, losses = [], []
    for _ in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = forward(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return times[warmup:], times[0], peak, losses


def matmul_peak(args, device) -> dict:
    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    best = {}
    for n in args.matmul_sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync(device)
        iters = max(2, int(args.matmul_seconds / max(1e-4, _time(lambda a=a, b=b: a @ b, device))))
        rates = [2 * n**3 * iters / _time(lambda a=a, b=b, k=iters: [a @ b for _ in range(k)], device) for _ in range(3)]
        best[n] = max(rates)
    return {"dtype": str(dtype).removeprefix("torch."), "sizes": list(best), "per_size": best, "peak_flops": max(best.values())}


def _time(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def run_model(name, shape, seq, mode, args, device, report) -> dict:
    import torch

    batch = max(1, args.tokens // seq)
    row = {"model": name, "mode": mode, "seq": seq, "batch": batch}
    if mode == "compiled":
        torch._dynamo.reset()
    try:
        model, forward, flops = build(name, shape, seq, mode == "compiled", args)
        times, first, peak, losses = train_steps(model, forward, batch, seq, args, device, args.steps, args.warmup)
    except Exception as e:  # noqa: BLE001 (OOM, a kernel that refuses a shape: recorded, the run goes on)
        return {**row, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"}
    step = statistics.median(times)
    row.update(params=sum(p.numel() for p in model.parameters()), flops_per_token=flops, step_ms=1e3 * step,
               step_ms_all=[1e3 * t for t in times], tokens_per_s=batch * seq / step, flops_per_s=flops * batch * seq / step,
               peak_mem_gib=peak, losses=losses, first_step_s=first,
               compile_s=first - step if mode == "compiled" else None)
    if report.get("datasheet_peak_flops"):
        row["mfu_datasheet"] = row["flops_per_s"] / report["datasheet_peak_flops"]
    row["mfu_measured"] = row["flops_per_s"] / report["matmul"]["peak_flops"]
    del model, forward
    torch._dynamo.reset()  # compiled code (and the model its guards hold) goes with the model
    cleanup(device)
    return row


def gau_memory(shape, seq, kernel, args, device) -> dict:
    """GAU-α-base forward + backward at batch 1 (no optimiser): step time and the memory above the weights (the
    activations kept for the backward, plus the gradients: a constant)."""
    import torch
    from torch.nn import functional as F

    row = {"kernel": kernel, "seq": seq}
    try:
        from kslm.nn import Backbone, BackboneConfig

        model = Backbone(BackboneConfig(**shape)).set_execution(attention_kernel=kernel).to(device).train()
        x = torch.randint(args.vocab, (1, seq + 1), generator=torch.Generator().manual_seed(0)).to(device)
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        times = []
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            cleanup(device)
            base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = model.logits(model(x[:, :-1]))
            F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
            sync(device)
            times.append(time.perf_counter() - t0)
        row["step_ms"] = 1e3 * statistics.median(times[1:])
        row["peak_mem_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None
        del model
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    cleanup(device)
    return row


def flex_probe(shape, args, device) -> dict:
    """One compiled flex_attention forward + backward at the GAU shape (q/k s, values e ≠ s), bf16, causal."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    s, e, T = shape["qk_dim"], shape["expansion"] * shape["d_model"], min(args.seqs)
    out = {"qk_dim": s, "v_dim": e, "seq": T}
    try:
        q, k = (torch.randn(4, 1, T, s, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        v = torch.randn(4, 1, T, e, device=device, dtype=torch.bfloat16, requires_grad=True)
        mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, T, T, device=str(device))
        fn = torch.compile(flex_attention)
        t0 = time.perf_counter()
        fn(q, k, v, block_mask=mask).sum().backward()
        sync(device)
        compile_s = time.perf_counter() - t0
        ms = 1e3 * statistics.median(_time(lambda: fn(q, k, v, block_mask=mask).sum().backward(), device) for _ in range(3))
        out["result"] = f"runs: fwd+bwd {ms:.1f} ms (compile {compile_s:.0f} s)"
    except Exception as e:  # noqa: BLE001
        out["result"] = f"fails: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, fp32, aot_eager compile: seconds")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--seqs", default="1024,2048")
    p.add_argument("--mem-seqs", default="1024,2048,4096")
    p.add_argument("--tokens", type=int, default=16384, help="tokens per step (batch = tokens / T)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", default=None, help="eager,compiled (--smoke: eager)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--budget", type=float, default=360.0, help="seconds after which no new measurement starts")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_base.json")
    table_flag(p, STORED)
    args = p.parse_args(argv)
    if args.table is not None:
        return print_tables(args.table, STORED, markdown)
    args.modes_given, args.modes = args.modes is not None, args.modes or "eager,compiled"
    if args.smoke:  # the code paths in seconds: eager only unless --modes asks (compiled: aot_eager, no C++ build)
        args.device = args.device or "cpu"
        args.seqs, args.mem_seqs, args.tokens, args.vocab = "32,64", "32,64", 128, 256
        args.steps, args.warmup, args.compile_backend, args.no_flex = 1, 1, "aot_eager", True
        args.modes = args.modes if args.modes_given else "eager"
    args.device = args.device or "cuda"
    args.seqs, args.mem_seqs = [int(s) for s in args.seqs.split(",")], [int(s) for s in args.mem_seqs.split(",")]
    args.matmul_sizes, args.matmul_seconds = ([256] if args.smoke else [4096, 8192]), (0.05 if args.smoke else 0.5)
    args.dtype = "fp32" if args.smoke else "bf16"
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu_base.py: no CUDA device (use --smoke for the CPU check)")
    args.threads = 0
    t_start = time.perf_counter()
    report = {"started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "machine": machine_info(args),
              "config": {"smoke": args.smoke, "dtype": args.dtype, "seqs": args.seqs, "mem_seqs": args.mem_seqs,
                         "tokens_per_step": args.tokens, "vocab": args.vocab, "steps": args.steps, "warmup": args.warmup,
                         "compile_backend": args.compile_backend, "budget_s": args.budget},
              "runs": [], "gau_memory": [], "skipped": []}
    gpu = report["machine"].get("gpu") or ""
    report["datasheet_peak_flops"] = next((v for k, v in DATASHEET_BF16.items() if k in gpu), None)
    report["shapes"] = shape_of = shapes(args)

    def save(what):
        report["wall_s"] = time.perf_counter() - t_start
        write_json(args.out, report)
        print(f"[{report['wall_s']:.0f} s] {what}", file=sys.stderr, flush=True)

    def in_budget(what):
        if time.perf_counter() - t_start > args.budget:
            report["skipped"].append(what)
            return False
        return True

    report["matmul"] = matmul_peak(args, device)
    save(f"matmul peak {report['matmul']['peak_flops'] / 1e12:.2f} TFLOP/s")
    models = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    plan = [(seq, mode, name) for seq in args.seqs for mode in modes for name in models]
    for seq, mode, name in plan[: len(modes) * len(models)]:  # the first T: every model and mode
        if in_budget(f"{name} {mode} T {seq}"):
            report["runs"].append(run_model(name, shape_of[name], seq, mode, args, device, report))
            save(f"{name} {mode} T {seq}: {report['runs'][-1].get('tokens_per_s', report['runs'][-1].get('error'))}")
    for seq in args.mem_seqs:
        for kernel in ("linear_memory", "dense"):
            if in_budget(f"GAU memory {kernel} T {seq}"):
                report["gau_memory"].append(gau_memory(shape_of["kslm-gau"], seq, kernel, args, device))
                save(f"GAU memory {kernel} T {seq}: {report['gau_memory'][-1]}")
    for seq, mode, name in plan[len(modes) * len(models):]:
        if in_budget(f"{name} {mode} T {seq}"):
            report["runs"].append(run_model(name, shape_of[name], seq, mode, args, device, report))
            save(f"{name} {mode} T {seq}: {report['runs'][-1].get('tokens_per_s', report['runs'][-1].get('error'))}")
    if not args.no_flex and in_budget("flex_attention probe"):
        report["flex"] = flex_probe(shape_of["kslm-gau"], args, device)
    save("done")
    print(markdown(report))


if __name__ == "__main__":
    main()
