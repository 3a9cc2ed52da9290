"""Training throughput of the kslm backbones against HF transformers' LlamaForCausalLM, at one shape.

    PYTHONPATH=. python bench/throughput.py [--d 512 --layers 4 --heads 8 --d-ff 2048 --seq 512 --batch 4
                                             --vocab 8000 --steps 3 --device cpu --out bench/results/throughput.json]
    (--help lists the rest: --threads, --rounds, --models, --adamw, --gau-attention, the quiet-step options)
    PYTHONPATH=. python bench/throughput.py --table    # the tables of the stored results again, computing nothing

What it measures (bench/README.md has the results and how to read them):

1. The machine's matmul rate: square 2048³ products and the GEMM shapes one training step of the model runs
   (QKV / output / FFN / logits projections as F.linear, and the weight-gradient layout gᵀ·x). Each shape is
   timed over --matmul-repeats repeats of ≥ 0.25 s and its best repeat kept; the largest over shapes and over
   two probes (before and after the models) is "the measured peak". fp32 on CPU; bf16 on CUDA, the dtype the
   models' matmuls run in there.
2. Training steps (forward + cross-entropy + backward + AdamW step + zero_grad) of, at the same d, layers,
   heads, vocab, sequence length and batch:
     kslm-transformer   BackboneConfig(block="transformer", norm="pre", attention="softmax", mask="causal",
                        tie_embeddings=True, tied_init="none"), RoPE, LayerNorm, FFN d → d_ff → d (GELU, 2 matrices)
     kslm-gau           the same with block="gau": 2 × layers GAU layers, expansion 2, qk_dim 128, SiLU (as in
                        FLASH), softmax attention (--gau-attention): ≈ the Transformer's parameter count
     llama-same-ffn     LlamaForCausalLM, intermediate_size = d_ff: the same FFN width, but SwiGLU has 3 matrices,
                        so 1.5 × the FFN parameters and FLOPs ("equal shape" as the config reads)
     llama-equal-params LlamaForCausalLM, intermediate_size = 2·d_ff/3 rounded to a multiple of 8: ≈ the kslm
                        Transformer's parameter count and FLOPs
   Llama: random init, no download, sdpa attention, tied embeddings, num_key_value_heads = heads, no cache.
   Every model run is a fresh subprocess (same seed, same random batch), so allocator state does not leak
   between models and the process's peak RSS is that model's own. The first --warmup steps of a run are not
   timed; tokens/s = batch·seq / step time.
3. Achieved FLOP/s = analytic training FLOPs per step / step time, in kslm's convention
   (Backbone.flops_per_token: 2 FLOPs per multiply-add, ×3 for forward + backward, attention over the full T×T
   score matrix, logits included; embedding lookups, norms and elementwise ops not counted). The same count is
   made here for Llama (q/k/v/o projections + 3·d·I SwiGLU + 4·T·d attention per layer, 2·d·V logits, ×3).
   MFU vs measured peak = achieved FLOP/s / measured peak matmul FLOP/s.
   MFU vs its GEMMs replayed = achieved FLOP/s / the FLOP/s of the same step's own matrix products run alone right
   after it (bench/gemm_replay.py: one extra untimed step under torch.profiler lists them), the median over the
   quiet step/replay pairs: the share of the matmul rate the step keeps, with the host's drift paired out.

Shared machines: with all cores in use, one other busy process stalls every OpenMP barrier and a step takes
several times longer. Each timed step therefore records the CPU share other processes took during it
(/proc/stat busy time minus this process's own CPU time); a step is "quiet" if that share is at most
--quiet-threshold. A model run waits (≤ --step-quiet-wait s) for a quiet half second before each timed step
and times steps until --steps of them were quiet (at most --max-steps; no new one after --run-budget s once it
has --steps). The models run in turn --rounds times (fresh processes), and those still short of
--min-quiet-steps quiet steps get more runs (up to --max-rounds each; none starts after --time-budget s of model
runs). The reported step time is the median of a model's quiet steps pooled over its runs; a model that never
gets enough of them is reported from all its steps and marked contended (its targets then read
"inconclusive"). --quiet-wait 0 turns all waiting off.

Memory: on CUDA torch.cuda.max_memory_allocated() over the training steps (weights included). On CPU the peak
resident set of the model's subprocess (getrusage ru_maxrss: interpreter and libraries included) and its
growth over the RSS just before the first step (/proc/self/status VmRSS): gradients, AdamW state, activations
and allocator caching.

The results go to --out as JSON (written atomically by kslm.io.write_json); a markdown table is printed.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemm_replay import GemmReplay, record_gemms  # noqa: E402
from machine import (  # noqa: E402
    RESULTS,
    cpu_busy_s,
    machine_info,
    own_cpu_s,
    print_tables,
    sync,
    table_flag,
    vm_rss_kib,
    wait_for_quiet,
)
from throughput_models import build  # noqa: E402
from throughput_report import markdown, merge_rounds, quiet_steps, targets  # noqa: E402

from kslm.io import write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS = ("kslm-transformer", "kslm-gau", "llama-same-ffn", "llama-equal-params")
RESULT_PREFIX = "BENCH_RESULT "
STORED = [RESULTS / "throughput.json", RESULTS / "throughput_repeat.json", RESULTS / "throughput_cuda_h100.json",
          RESULTS / "throughput_d256.json", RESULTS / "throughput_d512_1128.json", RESULTS / "throughput_d512_paired.json",
          RESULTS / "throughput_d256_paired.json"]


# ---------------------------------------------------------------------------------------------------- workers


def setup_torch(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    return torch, device


def run_model(name: str, args) -> dict:
    torch, device = setup_torch(args)
    from torch.nn import functional as F

    torch.manual_seed(args.seed)
    model, forward, flops_per_token, n_embed, desc = build(name, args)
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.adamw]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **impl)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randint(args.vocab, (args.batch, args.seq), generator=gen).to(device)
    y = torch.randint(args.vocab, (args.batch, args.seq), generator=gen).to(device)
    use_autocast = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
            logits = forward(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    rss_before = vm_rss_kib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    def timed(fn):
        """(seconds, own CPU seconds, the CPU share other processes took meanwhile — 0 = we had the machine alone,
        fn's result)."""
        sync(device)
        busy0, own0, t0 = cpu_busy_s(), own_cpu_s(), time.perf_counter()
        result = fn()
        sync(device)
        dt = time.perf_counter() - t0
        busy, own = cpu_busy_s() - busy0, own_cpu_s() - own0
        return dt, own, max(0.0, busy - own) / (dt * os.cpu_count()), result

    def timed_step():
        dt, own, bg, loss = timed(step)
        return dt, own, bg, float(loss)

    losses = [timed_step()[3] for _ in range(args.warmup)]
    # the step's own GEMMs (one more untimed step, under the profiler), replayed after each timed step
    replay = GemmReplay(record_gemms(step, device.type), device, torch.bfloat16 if use_autocast else torch.float32)
    replay.run()
    times, cpu, background, replay_s, replay_background = [], [], [], [], []
    run_started = time.perf_counter()
    # timed steps until --steps of them were quiet, or --max-steps, or --run-budget s (after at least --steps)
    while sum(b <= args.quiet_threshold for b in background) < args.steps and len(times) < args.max_steps:
        if len(times) >= args.steps and time.perf_counter() - run_started > args.run_budget:
            break
        if args.quiet_wait > 0 and device.type == "cpu":
            wait_for_quiet(args.step_quiet_wait, args.quiet_threshold, window_s=0.5)
        dt, own, bg, loss = timed_step()
        replay_dt, _, replay_bg, _ = timed(replay.run)
        replay_s.append(replay_dt)
        replay_background.append(replay_bg)
        times.append(dt)
        cpu.append(own)
        background.append(bg)
        losses.append(loss)
    out = {"model": name, **desc, "params": n_params, "params_non_embedding": n_params - n_embed,
           "flops_per_token": flops_per_token, "flops_per_step": args.batch * args.seq * flops_per_token,
           "step_times_s": times, "step_cpu_s": cpu, "background_cpu_share": background, "losses": losses,
           "gemm_calls_per_step": len(replay.calls), "gemm_flops_per_step": replay.flops, "gemm_replay_s": replay_s,
           "gemm_replay_background_cpu_share": replay_background}
    if device.type == "cuda":
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["peak_mem_kind"] = "torch.cuda.max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        out["peak_mem_mib"] = peak / 1024
        out["rss_before_train_mib"] = rss_before / 1024
        out["train_rss_growth_mib"] = (peak - rss_before) / 1024
        out["peak_mem_kind"] = "process ru_maxrss (fresh subprocess)"
    return out


def gemm_shapes(args) -> list:
    """(label, kind, (M, K, N)): C[M, N] = A[M, K] · B[K, N] in the layouts a training step uses."""
    M, d, ff, V = args.batch * args.seq, args.d, args.d_ff, args.vocab
    return [
        ("square 2048", "mm", (2048, 2048, 2048)),
        ("QKV proj x·Wᵀ", "linear", (M, d, 3 * d)),
        ("out proj x·Wᵀ", "linear", (M, d, d)),
        ("FFN up x·Wᵀ", "linear", (M, d, ff)),
        ("FFN down x·Wᵀ", "linear", (M, ff, d)),
        ("logits h·Eᵀ", "linear", (M, d, V)),
        ("FFN up dW = gᵀ·x", "wgrad", (ff, M, d)),
        ("logits dE = gᵀ·h", "wgrad", (V, M, d)),
    ]


def run_matmul(args) -> dict:
    torch, device = setup_torch(args)
    from torch.nn import functional as F

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    rows = []
    for label, kind, (M, K, N) in gemm_shapes(args):
        if kind == "mm":
            a, b = torch.randn(M, K, generator=gen), torch.randn(K, N, generator=gen)
            fn = torch.mm
        elif kind == "linear":  # weight stored [N, K], as nn.Linear does
            a, b = torch.randn(M, K, generator=gen), torch.randn(N, K, generator=gen)
            fn = F.linear
        else:  # weight gradient gᵀ·x: g [tokens, M] and x [tokens, N] as autograd has them, tokens = K
            a, b = torch.randn(K, M, generator=gen), torch.randn(K, N, generator=gen)

            def fn(g, x):
                return torch.mm(g.t(), x)
        a, b = a.to(device, dtype), b.to(device, dtype)
        flops = 2.0 * M * K * N
        for _ in range(2):
            fn(a, b)
        sync(device)
        t0 = time.perf_counter()
        fn(a, b)
        sync(device)
        iters = max(1, int(0.25 / max(time.perf_counter() - t0, 1e-6)))
        rates = []
        for _ in range(args.matmul_repeats):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                fn(a, b)
            sync(device)
            rates.append(flops * iters / (time.perf_counter() - t0))
        rows.append({"label": label, "kind": kind, "M": M, "K": K, "N": N, "iters_per_repeat": iters,
                     "best_flops": max(rates), "median_flops": statistics.median(rates)})
    peak = max(r["best_flops"] for r in rows)
    return {"dtype": str(dtype).removeprefix("torch."), "shapes": rows, "peak_flops": peak}


def worker_main(args):
    result = run_matmul(args) if args.worker == "matmul" else run_model(args.worker, args)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------- orchestration


def spawn(worker: str, args) -> dict:
    """Run one worker (a model or the matmul probe) in a fresh Python process; → its result dict."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker]
    for key in ("d", "layers", "heads", "d_ff", "seq", "batch", "vocab", "steps", "warmup", "device", "threads",
                "seed", "matmul_repeats", "gau_attention", "adamw", "max_steps", "run_budget", "quiet_threshold",
                "quiet_wait", "step_quiet_wait"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    waited = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else 0.0
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result.update(subprocess_wall_s=wall, waited_for_quiet_s=waited)
            return result
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    print(f"  {worker} failed: {err}", file=sys.stderr)
    return {"model": worker, "error": err}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--layers", type=int, default=4, help="Transformer / Llama layers (GAU gets twice as many)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-ff", type=int, default=None, help="FFN width (default 4·d)")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--steps", type=int, default=3, help="quiet timed training steps wanted per model run")
    p.add_argument("--max-steps", type=int, default=8, help="most timed steps per model run")
    p.add_argument("--run-budget", type=float, default=60.0,
                   help="seconds after which a model run takes no more timed steps (once it has --steps)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every model run")
    p.add_argument("--rounds", type=int, default=2,
                   help="the models run in turn at least this many times (fresh processes); step times are pooled")
    p.add_argument("--max-rounds", type=int, default=6,
                   help="more rounds, for the models with fewer than --min-quiet-steps quiet steps, up to this many")
    p.add_argument("--min-quiet-steps", type=int, default=3)
    p.add_argument("--quiet-threshold", type=float, default=0.05,
                   help="a step is quiet if other processes took at most this share of the machine's CPUs")
    p.add_argument("--time-budget", type=float, default=300.0,
                   help="seconds of model runs after which no extra round is started")
    p.add_argument("--device", default="cpu", help="cpu (fp32) or cuda (bf16 autocast)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--matmul-repeats", type=int, default=5)
    p.add_argument("--gau-attention", default="softmax", choices=("softmax", "softmax_plus", "relu2"))
    p.add_argument("--adamw", default="default", choices=("default", "foreach", "fused"),
                   help="torch.optim.AdamW implementation (default: torch's choice, as kslm.optim builds it)")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="before each run wait up to this many seconds for other processes to leave the CPUs idle "
                   "(0: never wait)")
    p.add_argument("--step-quiet-wait", type=float, default=10.0,
                   help="the same before each timed step, at most this many seconds")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "throughput.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    table_flag(p, STORED)
    args = p.parse_args(argv)
    if args.table is not None:
        return print_tables(args.table, STORED, markdown)
    args.d_ff = args.d_ff or 4 * args.d
    if args.worker:
        return worker_main(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - set(MODELS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)} (choose from {', '.join(MODELS)})")

    t0 = time.perf_counter()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("worker", "table")}
    report = {"started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "machine": machine_info(args), "config": config}
    with open("/proc/loadavg") as f:
        report["loadavg_start"] = f.read().split()[:3]
    print(f"matmul rate ({args.matmul_repeats} repeats per shape) ...", file=sys.stderr)
    mm_before = spawn("matmul", args)
    runs = {name: [] for name in models}
    models_started = time.perf_counter()

    def extra_round_allowed(rnd):
        return rnd < args.rounds or time.perf_counter() - models_started <= args.time_budget

    for rnd in range(args.max_rounds):
        # every model runs --rounds times; after that only those still short of quiet steps, while time remains
        pending = [n for n in models
                   if rnd < args.rounds or len(quiet_steps(runs[n], args.quiet_threshold)) < args.min_quiet_steps]
        if not pending or not extra_round_allowed(rnd):
            break
        for name in pending:
            if not extra_round_allowed(rnd):
                break
            print(f"round {rnd + 1} {name}: {args.warmup} warmup + {args.steps} timed steps ...", file=sys.stderr)
            r = spawn(name, args)
            if "error" not in r:
                quiet = sum(b <= args.quiet_threshold for b in r["background_cpu_share"])
                print(f"  median {statistics.median(r['step_times_s']):.3f} s/step, {quiet}/{len(r['step_times_s'])}"
                      f" quiet steps, background CPU {100 * statistics.fmean(r['background_cpu_share']):.0f} %",
                      file=sys.stderr)
            runs[name].append(r)
    print("matmul rate again ...", file=sys.stderr)
    mm_after = spawn("matmul", args)
    if "error" in mm_before or "error" in mm_after:
        raise SystemExit(f"matmul measurement failed: {mm_before.get('error') or mm_after.get('error')}")
    shapes = [dict(b, best_flops_before=b["best_flops"], best_flops_after=a["best_flops"],
                   best_flops=max(b["best_flops"], a["best_flops"]))
              for b, a in zip(mm_before["shapes"], mm_after["shapes"], strict=False)]
    peak = max(r["best_flops"] for r in shapes)
    report["matmul"] = {"dtype": mm_before["dtype"], "shapes": shapes, "peak_flops": peak,
                        "peak_flops_before": mm_before["peak_flops"], "peak_flops_after": mm_after["peak_flops"]}
    report["models"] = [merge_rounds(runs[name], peak, args) for name in models]
    ref = next((r for r in report["models"] if r["model"] == "kslm-transformer" and "error" not in r), None)
    for r in report["models"]:
        if ref and "error" not in r:
            r["kslm_transformer_speedup"] = ref["tokens_per_s"] / r["tokens_per_s"]
    report["targets"] = targets(report)
    with open("/proc/loadavg") as f:
        report["loadavg_end"] = f.read().split()[:3]
    report["wall_s"] = time.perf_counter() - t0
    write_json(args.out, report)
    print(markdown(report))
    print(f"\nwrote {args.out} ({report['wall_s']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
