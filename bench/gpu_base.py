"""GPU benchmark for a short loan: kslm Transformer-base and GAU-α-base against HF LlamaForCausalLM at equal parameters.

    bash bench/gpu_check.sh                  # the GPU check runs this twice (T 1024 + the GAU sweep, then T 2048)
    PYTHONPATH=. python bench/gpu_base.py --out $OUT/gpu_base.json           # alone, on one H100/H200
    PYTHONPATH=. python bench/gpu_base.py --smoke --out /tmp/gpu_base.json   # CPU, tiny, eager: the code paths
    PYTHONPATH=. python bench/gpu_base.py --table    # the stored tables again, computing nothing

Models (shapes from configs/lm/gau-alpha-base.yaml and configs/lm/transformer-base.yaml, vocabulary --vocab):
    kslm-transformer  12 blocks, d 768, 12 heads, FFN 3200 (GELU), Pre-Norm RMSNorm, RoPE, tied
    kslm-gau          24 GAU layers, d 768, s 128, e 1536, softmax_plus, Post-Norm RMSNorm (attention_kernel auto:
                      the linear-memory split-value SDPA path on CUDA)
    llama             LlamaForCausalLM, d 768, 12 layers, 12 heads, SwiGLU 2112, tied, sdpa: 2112 is the multiple of
                      64 nearest the equal-parameter width 2·3200/3 (kslm's 3200 and 1536 are multiples of 64 too, so
                      no model pays for ragged GEMM tiles); 0.5 % fewer parameters than kslm's
Every model is built after torch.manual_seed(0). Each runs at T in --seqs with batch --tokens / T, eager and compiled
(kslm: every residual sub-layer compiled in place, as `--model.compile true` trains; Llama: torch.compile of the whole
model, as HF users do). A step is forward → cross-entropy (fp32 logits) → backward → AdamW (fused on CUDA, as
kslm.optim builds it) → zero_grad, under bf16 autocast with fp32 weights (bf16-mixed). Step time: median of --steps
timed steps after --warmup (the first warm-up step of a compiled model is its compile time). FLOPs: kslm's analytic
training count (Backbone.flops_per_token: 6N + full T × T attention) and the same convention for Llama. MFU against
the datasheet bf16 dense peak of the exact device name (bench/gpu_facts.py; none for a card not listed) and against
the best bf16 GEMM of the same run (one output buffer rewritten: nothing accumulates).

Order: the GEMM peak; at the first T every model eager; GAU-α-base at batch 1 and T in --mem-seqs under
attention_kernel linear_memory then dense, one seeded model for both (step time, memory above the weights, and the
loss and gradient differences between the two kernels); every model compiled; the next T likewise; one compiled
flex_attention call at the GAU shape. Every measurement runs in try/finally (model dropped, torch._dynamo.reset(),
CUDA cache emptied), under the budget's alarm (bench/gpu_budget.py), and starts only when the time left covers what
the previous one of its kind took; the JSON is rewritten after each, so an out-of-memory error or the end of the
budget costs at most the measurement in flight, which is recorded as such.
"""

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_base_report import markdown  # noqa: E402
from gpu_budget import Budget, BudgetExceeded, Injector, error_text  # noqa: E402
from gpu_facts import facts  # noqa: E402
from gpu_measure import cleanup, flex_probe, gau_memory, matmul_peak, preload, train_steps  # noqa: E402
from machine import RESULTS, print_tables, table_flag  # noqa: E402

from kslm.io import write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STORED = [RESULTS / "gpu_base.json"]
MODELS = ("kslm-transformer", "kslm-gau", "llama")


def llama_intermediate(d_ff: int) -> int:
    """SwiGLU width with the parameters of a 2-matrix FFN of width d_ff (3·d·I = 2·d·d_ff), rounded to a multiple
    of 64."""
    return 64 * round(2 * d_ff / 3 / 64)


def shapes(args) -> dict:
    """The base configs' backbone shapes (smoke: shrunk), vocabulary --vocab."""
    import yaml

    out = {}
    for name, file in (("kslm-transformer", "transformer-base.yaml"), ("kslm-gau", "gau-alpha-base.yaml")):
        bb = yaml.safe_load((REPO / "configs" / "lm" / file).read_text(encoding="utf-8"))["model"]["init_args"]["backbone"]
        bb.update(vocab_size=args.vocab, max_length=max([*args.seqs, *args.mem_seqs]))
        if args.smoke:
            bb.update(d_model=64, n_layers=2 if bb["block"] == "transformer" else 4, qk_dim=16, n_heads=4, d_ff=256)
        out[name] = bb
    t = out["kslm-transformer"]
    out["llama"] = {"d": t["d_model"], "layers": t["n_layers"], "heads": t["n_heads"],
                    "intermediate": llama_intermediate(t["d_ff"]), "vocab": args.vocab}
    return out


def build(name: str, shape: dict, seq: int, compiled: bool, args):
    """→ (module, forward(ids) → logits, training FLOPs per token); the weights drawn after torch.manual_seed(0)."""
    import torch

    torch.manual_seed(0)
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


def run_model(name, shape, seq, mode, args, device, report, budget, inject) -> dict:
    import torch

    batch = max(1, args.tokens // seq)
    row, model, forward, t0 = {"model": name, "mode": mode, "seq": seq, "batch": batch}, None, None, time.perf_counter()
    try:
        with budget.bounded(f"{mode}:{name}"):
            inject("throughput")
            torch._dynamo.reset()
            model, forward, flops = build(name, shape, seq, mode == "compiled", args)
            times, first, peak, losses = train_steps(model, forward, batch, seq, args, device)
            step = statistics.median(times)
            row.update(params=sum(p.numel() for p in model.parameters()), flops_per_token=flops, step_ms=1e3 * step,
                       step_ms_all=[1e3 * t for t in times], tokens_per_s=batch * seq / step,
                       flops_per_s=flops * batch * seq / step, peak_mem_gib=peak, losses=losses, first_step_s=first,
                       compile_s=first - step if mode == "compiled" else None)
            peaks = report.get("datasheet_peak_flops"), (report.get("matmul") or {}).get("peak_flops")
            row["mfu_datasheet"], row["mfu_measured"] = (row["flops_per_s"] / p if p else None for p in peaks)
    except BudgetExceeded:
        row["error"] = "stopped: budget"
    except Exception as e:  # noqa: BLE001 (OOM, a kernel that refuses a shape: recorded, the run goes on)
        row["error"] = error_text(e)
    finally:
        model = forward = None  # noqa: F841 (dropped before the cache is emptied)
        if problem := cleanup(device, dynamo=True):  # compiled code, and the model its guards hold, go too
            row["cleanup_error"] = problem
        row["wall_s"] = time.perf_counter() - t0
    return row


def plan_of(args) -> list:
    """(kind, what, …): the first T's eager runs, the GAU memory sweep, its compiled runs; the next T likewise; flex."""
    modes = [m for m in ("eager", "compiled") if m in args.modes]
    sweep = [("memory", f"GAU memory T {t}", t) for t in args.mem_seqs]
    plan = [] if args.seqs else sweep
    for i, seq in enumerate(args.seqs):
        for j, mode in enumerate(modes):
            plan += [("run", f"{name} {mode} T {seq}", name, seq, mode) for name in args.models]
            plan += sweep if i == j == 0 else []
    return plan + ([] if args.no_flex else [("flex", "flex_attention probe")])


def account(report, kind, what, rows):
    """Each row skipped or stopped by the budget → report["skipped"]; each failure → report["errors"] with its phase."""
    phase = {"run": "throughput", "memory": "gau_memory", "flex": "flex", "matmul": "matmul"}[kind]
    for r in rows:
        label = f"{what} {r['kernel']}" if kind == "memory" else f"{what} {r['size']}³" if kind == "matmul" else what
        problem = r.get("skipped") or r.get("error")
        if problem and problem.startswith(("skipped", "stopped")):
            report["skipped"].append(f"{label}: {problem}")
        elif problem:
            report["errors"].append({"phase": phase, "what": label, "error": problem})


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, fp32, aot_eager compile: seconds")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--seqs", default=None, help="default 1024,2048 (--smoke: 32,64)")
    p.add_argument("--mem-seqs", default=None, help="GAU memory sweep; default 1024,2048,4096 (--smoke: 32,64); '' = none")
    p.add_argument("--tokens", type=int, default=16384, help="tokens per step (batch = tokens / T)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", default=None, help="eager,compiled (--smoke: eager)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--budget", type=float, default=360.0, help="seconds; also stops the measurement in flight")
    p.add_argument("--costs-from", type=Path, default=None,
                   help="an earlier report of this machine: its runs' seconds guide the budget, its GEMM peak is reused")
    p.add_argument("--inject-oom", default=None, help=argparse.SUPPRESS)  # the dry run's failures (bench/gpu_budget.py)
    out = Path(os.environ["OUT"]) / "gpu_base.json" if os.environ.get("OUT") else RESULTS / "gpu_base.json"
    p.add_argument("--out", type=Path, default=out, help=f"default $OUT/gpu_base.json when OUT is set, else {out}")
    table_flag(p, STORED)
    args = p.parse_args(argv)
    if args.table is not None:
        return args
    modes_given, args.modes = args.modes is not None, args.modes or "eager,compiled"
    if args.smoke:  # the code paths in seconds: eager only unless --modes asks (compiled: aot_eager, no C++ build)
        args.device = args.device or "cpu"
        args.seqs, args.mem_seqs = args.seqs or "32,64", args.mem_seqs if args.mem_seqs is not None else "32,64"
        args.tokens, args.vocab, args.steps, args.warmup, args.compile_backend, args.no_flex = 128, 256, 1, 1, "aot_eager", True
        args.modes = args.modes if modes_given else "eager"
    args.device = args.device or "cuda"
    args.seqs = [int(s) for s in (args.seqs or "1024,2048").split(",") if s]
    args.mem_seqs = [int(s) for s in (args.mem_seqs if args.mem_seqs is not None else "1024,2048,4096").split(",") if s]
    args.modes, args.models = [m for m in args.modes.split(",") if m], [m for m in args.models.split(",") if m]
    args.matmul_sizes, args.matmul_seconds = ([128, 256] if args.smoke else [4096, 8192]), (0.05 if args.smoke else 0.5)
    args.dtype = "fp32" if args.smoke else "bf16"
    return args


def main(argv=None):
    t0, args = time.perf_counter(), parse(argv)
    if args.table is not None:
        return print_tables(args.table, STORED, markdown)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu_base.py: no CUDA device (use --smoke for the CPU check)")
    floor = {f"compiled:{m}": 30.0 for m in MODELS} if device.type == "cuda" else {}
    budget, inject = Budget(args.budget, start=t0, floor=floor), Injector(args.inject_oom)
    earlier = {}
    if args.costs_from and args.costs_from.is_file():  # the same models at another T: about as long
        import json

        earlier = json.loads(args.costs_from.read_text(encoding="utf-8"))
        for r in earlier.get("runs", []):
            if "wall_s" in r and "error" not in r and "skipped" not in r:
                budget.costs[f"{r['mode']}:{r['model']}"] = r["wall_s"]
    report = {"started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "machine": facts(device.type),
              "config": {"smoke": args.smoke, "dtype": args.dtype, "seqs": args.seqs, "mem_seqs": args.mem_seqs,
                         "tokens_per_step": args.tokens, "vocab": args.vocab, "steps": args.steps, "warmup": args.warmup,
                         "compile_backend": args.compile_backend, "budget_s": args.budget, "modes": args.modes},
              "runs": [], "gau_memory": [], "gau_loss_check": [], "skipped": [], "errors": [], "complete": False}
    report["datasheet_peak_flops"] = report["machine"]["datasheet_bf16_flops"]
    report["shapes"] = shape_of = shapes(args)
    report["preload_failed"] = preload()  # before any alarm can interrupt a first import

    def save(what):
        report["wall_s"] = budget.elapsed()
        write_json(args.out, report)
        print(f"[{report['wall_s']:.0f} s] {what}", file=sys.stderr, flush=True)

    save("started")
    if (earlier.get("matmul") or {}).get("peak_flops"):  # measured minutes ago on this card: not again
        report["matmul"] = {**earlier["matmul"], "from": str(args.costs_from)}
    else:
        report["matmul"] = matmul_peak(args, device, budget, inject)
        account(report, "matmul", "GEMM", [{"size": n, "error": e} for n, e in report["matmul"]["failed"].items()])
    peak = report["matmul"]["peak_flops"]
    save(f"matmul peak {peak / 1e12:.3g} TFLOP/s" if peak else f"matmul peak: none ({report['matmul']['failed']})")
    for kind, what, *item in plan_of(args):
        try:
            found = measure(kind, item, args, device, report, shape_of, budget, inject)
            account(report, kind, what, found)
        except Exception as e:  # noqa: BLE001 (a bug of this script's own: recorded, the run goes on)
            found = [{"error": error_text(e)}]
            report["errors"].append({"phase": kind, "what": what, "error": found[0]["error"]})
        save(f"{what}: " + "; ".join(r.get("skipped") or r.get("error") or r.get("result") or
                                    (f"{r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else
                                     f"{r['kernel']} {r['step_ms']:.1f} ms") for r in found))
    report["complete"] = True
    save("done")
    print(markdown(report))


def measure(kind, item, args, device, report, shape_of, budget, inject) -> list:
    """One plan item, its rows appended to the report. → the rows."""
    if kind == "run":
        name, seq, mode = item
        reason = budget.refuses(f"{mode}:{name}", 1.2)
        rows = [{"model": name, "mode": mode, "seq": seq, "skipped": reason} if reason else
                run_model(name, shape_of[name], seq, mode, args, device, report, budget, inject)]
        report["runs"] += rows
    elif kind == "memory":
        rows, check = gau_memory(shape_of["kslm-gau"], item[0], args, device, budget, inject)
        report["gau_memory"] += rows
        report["gau_loss_check"] += [check] if check else []
    else:
        reason = budget.refuses("flex")
        report["flex"] = ({"result": reason, "skipped": reason} if reason else
                          flex_probe(shape_of["kslm-gau"], args, device, budget, inject))
        rows = [report["flex"]]
    return rows


if __name__ == "__main__":
    main()
