"""The training path a user runs, on the GPU: `kslm fit` of configs/lm/transformer-base.yaml (bf16-mixed, compiled
blocks, AdamW that kslm.optim fuses on CUDA) on a corpus written here (kslm's embedded corpus, Python's documentation:
1.5 M characters, with the config's char tokenizer; ../shared does not travel to a lent machine), in three processes:

    full    2N steps uninterrupted: does the loss fall; tokens/s and MFU of the real training loop; compile time
    stop    N steps, the same seed and schedule (horizon 2N)
    resume  from stop's last.ckpt (--ckpt_path) to step 2N

then resume's weights against full's: bitwise equal or not, max |ΔW|, and ‖ΔW‖ / ‖W(2N) − W(N)‖ (the difference as a
fraction of what the resumed segment itself moved the weights), plus the logged losses after step N. On the CPU
(--smoke: tiny shapes, fp32, eager) the resume is bitwise. On a GPU the kernels whose reductions run in a varying
order (flash attention's backward, autotuned inductor kernels in a fresh process) may change the last bits, so the
resume also passes within RESUME_RTOL and LOSS_ATOL: a broken resume (lost AdamW moments, a restarted schedule, the
data replayed from the start) moves the weights by a large fraction of the segment's own update (bench/README.md,
"The GPU check", measures one on the CPU).

    PYTHONPATH=. python bench/gpu_fit.py --out DIR [--budget S] [--steps N] [--smoke] [--work DIR]

Writes DIR/fit.json at the start and after every run, and each run's output to DIR/fit.log; checkpoints, logs and
caches go to --work (default: a temporary folder, removed at the end). A run still going at the budget's end gets
SIGTERM (kslm fit stops at the next batch boundary, exit 143, leaving no partial file), then SIGKILL 15 s later.
"""

import argparse
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_budget import Budget, Injector, error_text, run_bounded  # noqa: E402
from gpu_facts import datasheet_peak, missing_modules, nvidia_smi  # noqa: E402

from kslm.io import write_json, write_text  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESUME_RTOL, LOSS_ATOL = 0.05, 0.02
SMOKE = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.compile", "false",
         "--model.backbone.d_model", "32", "--model.backbone.n_layers", "2", "--model.backbone.n_heads", "2",
         "--model.backbone.d_ff", "64", "--model.backbone.qk_dim", "16", "--data.seq_len", "32", "--data.num_workers", "0",
         "--model.optim.lr", "3e-3"]
COMPILE_FAILURE = ("torch._dynamo", "torch._inductor", "BackendCompilerFailed", "InductorError", "triton")


def parse_log(text: str) -> dict:
    """What `kslm fit` printed (plain lines: its output is no terminal): the progress lines (step, mean loss since the
    previous line, tok/s), validations, the parameter count and the final tokens/s line."""
    out = {"lines": [], "val": []}
    for line in text.splitlines():
        fields = line.strip().split(" | ")
        try:
            if fields[0].startswith("step ") and len(fields) > 1:
                row = {"step": int(fields[0].split()[1].split("/")[0])}
                for f in fields[1:]:
                    if f.startswith("loss "):
                        row["loss"] = float(f.split()[1])
                    elif f.endswith(" tok/s"):
                        row["tok_s"] = float(f.split()[0].replace(",", ""))
                out["lines"].append(row)
            elif fields[0].startswith("validation step "):
                step, loss = fields[0].removeprefix("validation step ").split(": val/loss ")
                out["val"].append({"step": int(step), "loss": float(loss)})
            elif line.startswith("kslm: ") and " parameters " in line:
                out["params"] = line.removeprefix("kslm: ").split(" parameters")[0]
            elif line.startswith("kslm: ") and " tokens/s per device" in line:
                parts = line.removeprefix("kslm: ").split(", ")
                out["tokens_per_s"] = float(parts[0].split()[0].replace(",", ""))
                out["flops_per_s"] = float(parts[1].split()[0].replace(",", "")) * 1e9
                out["lightning_mfu"] = parts[2].strip()
            elif "GPU available:" in line:
                out["gpu_line"] = line.strip()
        except (IndexError, ValueError):
            continue
    return out


def summarise(run: dict, every: int, tokens_per_step: int, peak) -> None:
    """Loss first → last, the compile estimate (the first window's time minus its steps at the steady rate), MFU."""
    lines = [r for r in run["lines"] if "loss" in r]
    if lines:
        run["loss_first"], run["loss_last"] = lines[0]["loss"], lines[-1]["loss"]
        run["loss_falls"] = lines[-1]["loss"] < lines[0]["loss"]
    rates = [r["tok_s"] for r in run["lines"][1:] if r.get("tok_s")]
    first = run["lines"][0] if run["lines"] else {}
    if rates and first.get("tok_s"):
        steady = statistics.median(rates)
        window = first["step"] - run.get("start_step", 0)
        run["steady_tokens_per_s"] = steady
        run["first_window_extra_s"] = window * tokens_per_step * (1 / first["tok_s"] - 1 / steady)
    if peak and run.get("flops_per_s"):
        run["mfu_datasheet"] = run["flops_per_s"] / peak


def checkpoint_facts(path: Path) -> dict:
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    groups = (ck.get("optimizer_states") or [{}])[0].get("param_groups") or [{}]
    return {"path": path.name, "size_mb": round(path.stat().st_size / 2**20, 1), "global_step": ck.get("global_step"),
            "epoch": ck.get("epoch"), "adamw_fused": groups[0].get("fused"), "tensors": len(ck.get("state_dict", {}))}


def compare(full: Path, stop: Path, resumed: Path, runs: dict, n: int) -> dict:
    """resume vs full at step 2N, relative to what the segment N → 2N moved (full's W(2N) − stop's W(N))."""
    import torch

    a, s, b = (torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in (full, stop, resumed))
    sa, ss, sb = a["state_dict"], s["state_dict"], b["state_dict"]
    if set(sa) != set(sb):
        return {"verdict": "differs", "error": f"parameter names differ: {sorted(set(sa) ^ set(sb))[:5]}"}
    diff2 = update2 = max_abs = 0.0
    for k, x in sa.items():
        if x.is_floating_point() and x.numel():
            d, u = x.double() - sb[k].double(), x.double() - ss[k].double()
            diff2, update2 = diff2 + float((d * d).sum()), update2 + float((u * u).sum())
            max_abs = max(max_abs, float(d.abs().max()))
    weights_equal = all(torch.equal(sa[k], sb[k]) for k in sa)
    opt_a, opt_b = ((ck.get("optimizer_states") or [{}])[0].get("state", {}) for ck in (a, b))
    optimizer_equal = set(opt_a) == set(opt_b) and all(
        torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i] if torch.is_tensor(opt_a[i][k]))
    rel = math.sqrt(diff2 / update2) if update2 > 0 else (0.0 if diff2 == 0 else math.inf)
    full_lines = {r["step"]: r["loss"] for r in runs["full"]["lines"] if r["step"] > n and "loss" in r}
    res_lines = {r["step"]: r["loss"] for r in runs["resume"]["lines"] if "loss" in r}
    common = sorted(set(full_lines) & set(res_lines))
    loss_diff = max((abs(full_lines[t] - res_lines[t]) for t in common), default=None)
    ok = rel <= RESUME_RTOL and (loss_diff is None or loss_diff <= LOSS_ATOL)
    return {"global_steps": [a.get("global_step"), s.get("global_step"), b.get("global_step")],
            "weights_bitwise_equal": weights_equal, "optimizer_bitwise_equal": optimizer_equal, "max_abs_diff": max_abs,
            "rel_diff": rel, "rel_tol": RESUME_RTOL, "loss_steps_compared": common, "max_loss_diff": loss_diff,
            "loss_atol": LOSS_ATOL, "verdict": "bitwise" if weights_equal else "within tolerance" if ok else "differs"}


def corpus(work: Path, smoke: bool) -> Path:
    from kslm.data.corpus import build_corpus

    path = work / "corpus.txt"
    text = build_corpus()
    write_text(path, text[:60_000] if smoke else text)
    return path


def fit_args(args, work: Path, name: str, steps: int, text: Path, extra=()) -> list:
    out = ["--config", str(REPO / args.config), "--data.data_files", str(text), "--trainer.max_steps", str(steps),
           "--model.optim.total_steps", str(2 * args.steps), "--model.optim.warmup_steps", str(args.warmup),
           "--trainer.val_check_interval", str(args.steps), "--trainer.limit_val_batches", str(args.limit_val),
           "--trainer.log_every_n_steps", str(args.log_every), "--model.sample_count", "0",
           "--data.batch_size", str(args.batch), "--checkpoint.dirpath", str(work / f"ckpt-{name}")]
    return out + (SMOKE if args.smoke else []) + list(extra)


def launch(name, argv, args, work, env, budget) -> dict:
    """One `kslm fit` (a process of its own, bounded by the budget), its output appended to fit.log."""
    log = args.out / "fit.log"
    start = log.stat().st_size if log.exists() else 0
    cmd = [sys.executable, "-m", "kslm.cli", "fit", *argv]
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n===== {name}: {shlex.join(cmd)}\n")
    with open(log, "ab") as f:
        res = run_bounded(cmd, budget.deadline, grace=15.0, term_first=True, own_group=False, cwd=work, env=env,
                          stdout=f, stderr=subprocess.STDOUT)
    text = log.read_bytes()[start:].decode("utf-8", errors="replace")
    run = {**res, **parse_log(text), "command": "kslm fit " + shlex.join(argv)}
    if res["rc"] != 0:
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-60:]
        run["error"] = ("stopped: budget" if res["killed"] else f"exit {res['rc']}") + (f": {tail[-1][:300]}" if tail else "")
        run["log_tail"], run["compile_failure"] = tail[-3:], any(s in ln for ln in tail for s in COMPILE_FAILURE)
    ckpt = work / f"ckpt-{name}" / "last.ckpt"
    if ckpt.is_file():
        run["checkpoint"] = checkpoint_facts(ckpt)
    return run


def main(argv=None):
    t0 = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="the folder for fit.json and fit.log (default $OUT)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, fp32, eager: the control flow in seconds")
    p.add_argument("--config", default="configs/lm/transformer-base.yaml")
    p.add_argument("--steps", type=int, default=None, help="N (full and resume run 2N); default 150 (--smoke: 6)")
    p.add_argument("--batch", type=int, default=None, help="sequences a step (default 16 × 1024 tokens; --smoke 4 × 32)")
    p.add_argument("--budget", type=float, default=300.0, help="seconds for the three runs")
    p.add_argument("--work", type=Path, default=None, help="checkpoints, logs, caches (default: a temporary folder)")
    p.add_argument("--keep-work", action="store_true")
    p.add_argument("--inject-oom", default=None, help=argparse.SUPPRESS)  # fit_full, fit_stop, fit_resume
    args = p.parse_args(argv)
    if args.out is None:
        p.error("--out is required when OUT is not set")
    args.steps = args.steps or (6 if args.smoke else 150)
    args.batch = args.batch or (4 if args.smoke else 16)
    # one validation batch on the GPU: a smaller last one would cost a recompile (dynamic shapes) in each process
    args.log_every, args.limit_val, args.warmup = (3, 2, 0) if args.smoke else (10, 1, 20)
    reserve = 0.0 if args.smoke else 25.0  # kept from the runs for a stopped run's SIGTERM grace and the resume check
    tokens_per_step = args.batch * (32 if args.smoke else 1024)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="kslm-gpu-fit-"))
    work.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget - reserve, start=t0, floor={} if args.smoke else {"fit": 60.0})
    inject = Injector(args.inject_oom)
    peak = None if args.smoke else datasheet_peak(nvidia_smi().get("name"))  # no CUDA context held in this process
    report = {"started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": shlex.join(sys.argv),
              "config": {"config": args.config, "smoke": args.smoke, "steps_n": args.steps, "batch": args.batch,
                         "tokens_per_step": tokens_per_step, "budget_s": args.budget, "datasheet_peak_flops": peak},
              "runs": {}, "resume_check": None, "errors": [], "skipped": [], "complete": False}

    def save(what):
        report["wall_s"] = budget.elapsed()
        write_json(args.out / "fit.json", report)
        print(f"[fit {report['wall_s']:.0f} s] {what}", file=sys.stderr, flush=True)

    save("started")
    try:
        steps(args, work, budget, inject, report, save, tokens_per_step, peak)
    except Exception as e:  # noqa: BLE001 (this script's own failure: recorded, fit.json still complete)
        report["errors"].append({"phase": "fit", "what": "gpu_fit.py", "error": error_text(e)})
    finally:
        report["complete"] = True
        save("done")
        if not args.keep_work and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def steps(args, work, budget, inject, report, save, tokens_per_step, peak):
    missing = missing_modules()
    if missing:
        report["skipped"].append(f"kslm fit: missing packages {', '.join(missing)}: carry them as wheels "
                                 "(bench/gpu_wheels.sh, bench/README.md)")
        return
    text = work / "corpus.txt"  # written before the first run that starts
    env = {**os.environ, "KSLM_CACHE": str(work / "cache"), "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)}
    runs, n, extra = report["runs"], args.steps, []
    stop_ckpt = work / "ckpt-stop" / "last.ckpt"
    plan = [("full", 2 * n, 1.0), ("stop", n, 0.5), ("resume", 2 * n, 0.5)]
    for name, steps_to, factor in plan:
        full = runs.get("full", {})
        if name != "full" and full.get("rc") not in (None, 0) and not full.get("killed"):  # it ran, and failed
            report["skipped"].append(f"{name}: not started, the full run failed (fit.log)")
            continue
        if name == "resume" and not (stop_ckpt.is_file() and runs.get("stop", {}).get("rc") == 0):
            report["skipped"].append("resume: no checkpoint from the stop run")
            continue
        if reason := budget.refuses("fit", factor):
            report["skipped"].append(f"{name}: {reason}")
            continue
        argv = fit_args(args, work, name, steps_to, text, [*extra, *(["--ckpt_path", str(stop_ckpt)] if name == "resume" else [])])
        try:
            inject(f"fit_{name}")
            if not text.is_file():
                corpus(work, args.smoke)
            run = launch(name, argv, args, work, env, budget)
        except Exception as e:  # noqa: BLE001 (an injected failure, a launch that failed)
            run = {"error": error_text(e), "lines": [], "val": []}
        if name == "full" and run.get("compile_failure") and not run.get("killed") and not budget.refuses("fit"):
            report["errors"].append({"phase": "fit", "what": "full (compiled)", "error": run["error"]})
            extra = ["--model.compile", "false"]  # the training path without compile, rather than nothing
            run = launch("full", fit_args(args, work, "full", 2 * n, text, extra), args, work, env, budget)
            run["compile_fallback"] = True
        run["start_step"] = n if name == "resume" else 0
        summarise(run, args.log_every, tokens_per_step, peak)
        runs[name] = run
        budget.costs["fit"] = max(budget.costs.get("fit", 0.0), run.get("wall_s", 0.0))
        if "error" in run:
            (report["skipped"] if run["error"].startswith("stopped") else report["errors"]).append(
                {"phase": "fit", "what": name, "error": run["error"]} if not run["error"].startswith("stopped")
                else f"{name}: {run['error']}")
        save(f"{name}: " + (run.get("error") or f"loss {run.get('loss_first')} → {run.get('loss_last')}, "
                                                 f"{run.get('tokens_per_s', 0):,.0f} tokens/s"))
    if all(runs.get(k, {}).get("rc") == 0 for k in ("full", "stop", "resume")):
        report["resume_check"] = compare(work / "ckpt-full" / "last.ckpt", stop_ckpt, work / "ckpt-resume" / "last.ckpt",
                                         runs, n)
        save(f"resume check: {report['resume_check']['verdict']}")
    else:
        report["skipped"].append("resume check: needs the full, stop and resume runs")


if __name__ == "__main__":
    main()
