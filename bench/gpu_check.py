"""The GPU check: one command for a short GPU slot that writes everything under the folder it is given as it goes.

    bash bench/gpu_check.sh                    # on a lent machine: $OUT; installs .whl/ if carried (bench/README.md)
    PYTHONPATH=. python bench/gpu_check.py --out DIR [--budget 450] [--phases machine,base_1024,fit,base_2048]
    PYTHONPATH=. python bench/gpu_check.py --smoke --out DIR       # the CPU dry run (tiny shapes; in the test suite)
    PYTHONPATH=. python bench/gpu_check.py --table [FILE …]        # the report of a stored gpu_check.json again

Phases, in this order (a later one never waits on an earlier one's success):
    machine    card, driver, torch, CUDA, cuDNN, the package versions (bench/gpu_facts.py)
    base_1024  bench/gpu_base.py at T 1024: the GEMM peak, kslm Transformer-base / GAU-α-base / Llama eager, the GAU
               memory sweep (T 1024, 2048, 4096; dense vs linear_memory, with their loss difference), then compiled
    fit        bench/gpu_fit.py: `kslm fit` of the Transformer-base config, 2N steps, N + resume to 2N, compared
    base_2048  bench/gpu_base.py at T 2048, and the flex_attention probe
then DIR/gpu_check.json (every phase's report inside) and DIR/gpu_check.md (the tables and the issue's targets), both
also rewritten after every phase. Each phase runs in a process of its own, given the time until its share of --budget
ends (WEIGHT) as its own budget, which also stops its measurement in flight; the phase is killed (its process group)
GRACE seconds after that, keeping what its JSON already holds. An out-of-memory error, a crash or a hang in one phase
is recorded and the next phase runs. Files under DIR: gpu_check.json, gpu_check.md, gpu_check.log (bench/gpu_check.sh),
base_1024.json, base_2048.json, fit.json, fit.log: 7 of the 8 a lent machine returns, none in a subfolder.
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_budget import INJECT_ENV, error_text, run_bounded  # noqa: E402
from gpu_check_report import markdown  # noqa: E402

from kslm.io import print_tables, table_flag, write_json, write_text  # noqa: E402

BENCH = Path(__file__).resolve().parent
STORED = sorted((BENCH / "results").glob("gpu_check*.json"))  # measured checks, kept (bench/README.md)
PHASES = ("machine", "base_1024", "fit", "base_2048")
WEIGHT = {"base_1024": 0.45, "fit": 0.40, "base_2048": 0.15}  # of the budget, among the phases run (ends: 45, 85, 100 %)
MIN_S = {"base_1024": 45.0, "fit": 75.0, "base_2048": 30.0}  # a phase with less time left is skipped (not --smoke)
GRACE = 20.0


def child(phase: str, args, left: float) -> tuple:
    """The command of a phase run as a process of its own, and the JSON it writes."""
    py, smoke = [sys.executable], ["--smoke"] if args.smoke else []
    if phase == "fit":
        return [*py, str(BENCH / "gpu_fit.py"), "--out", str(args.out), "--budget", f"{left:.0f}", *smoke,
                *(["--work", str(args.work / "fit")] if args.work else [])], args.out / "fit.json"
    out = args.out / f"{phase}.json"
    seqs = {"base_1024": ("32" if args.smoke else "1024"), "base_2048": ("64" if args.smoke else "2048")}[phase]
    mem = ("32,64" if args.smoke else "1024,2048,4096") if phase == "base_1024" else ""
    cmd = [*py, str(BENCH / "gpu_base.py"), "--out", str(out), "--seqs", seqs, "--mem-seqs", mem, "--budget",
           f"{left:.0f}", *smoke, *(["--no-flex"] if phase == "base_1024" else [])]
    if phase == "base_2048":
        cmd += ["--costs-from", str(args.out / "base_1024.json")]
    return cmd, out


def share_end(phase, wanted) -> float:
    """The fraction of the budget by whose end `phase` must be done: its weight and those of the phases before it,
    over the weights of the phases run (a rerun of one phase gets the whole budget)."""
    run = [p for p in PHASES if p in wanted and p in WEIGHT]
    return sum(WEIGHT[p] for p in run[: run.index(phase) + 1]) / sum(WEIGHT[p] for p in run)


def run_phase(phase, args, report, t0) -> dict:
    """One phase → its entry in the report: status (ok | error: … | skipped: budget … | killed: …), seconds, and the
    report the phase wrote (embedded)."""
    start = time.perf_counter()
    entry = {"status": None, "started_s": round(start - t0, 1)}
    if phase == "machine":  # in a process of its own: this one never holds a CUDA context, nor hangs on a driver
        with tempfile.TemporaryDirectory() as tmp:
            facts = Path(tmp) / "machine.json"
            cmd = [sys.executable, str(BENCH / "gpu_facts.py"), "cpu" if args.smoke else "cuda", str(facts)]
            with open(Path(tmp) / "stderr", "wb") as err:
                res = run_bounded(cmd, time.perf_counter() + 90, env=args.env, stderr=err)
            problem = (Path(tmp) / "stderr").read_text(encoding="utf-8", errors="replace").strip().splitlines()
            if res["rc"] == 0 and facts.is_file():
                report["machine"], entry["status"] = json.loads(facts.read_text(encoding="utf-8")), "ok"
            else:
                entry["status"] = f"error: {problem[-1][:300] if problem else 'exit ' + str(res['rc'])}"
        entry["wall_s"] = time.perf_counter() - start
        return entry
    deadline = t0 + share_end(phase, args.wanted) * args.budget
    left = deadline - time.perf_counter()
    if left < (0.5 if args.smoke else MIN_S[phase]):
        entry["status"] = f"skipped: budget ({max(left, 0):.0f} s left of its share)"
        return entry
    cmd, out = child(phase, args, left)
    entry["command"] = shlex.join(cmd)
    if out.exists():
        out.unlink()  # a report left by an earlier run must not pass for this one's
    print(f"[check {time.perf_counter() - t0:.0f} s] {phase}: {left:.0f} s", file=sys.stderr, flush=True)
    try:
        res = run_bounded(cmd, deadline + GRACE, grace=5.0, env=args.env)
        entry.update(rc=res["rc"], wall_s=res["wall_s"])
        entry["status"] = ("ok" if res["rc"] == 0 else f"killed at its share's end + {GRACE:.0f} s" if res["killed"]
                           else f"error: exit {res['rc']}")
    except Exception as e:  # noqa: BLE001 (it could not start at all)
        entry.update(status=f"error: {error_text(e)}", wall_s=time.perf_counter() - start)
    if out.is_file():
        try:
            entry["report"] = json.loads(out.read_text(encoding="utf-8"))
            entry["file"] = out.name
        except ValueError as e:
            entry["status"] += f"; its JSON is unreadable ({e})"
    elif entry["status"] == "ok":
        entry["status"] = "error: it wrote no JSON"
    return entry


def main(argv=None):
    t0 = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="the folder everything goes to (default $OUT, which a lent machine returns)")
    p.add_argument("--budget", type=float, default=None, help="seconds for all phases (default 450; --smoke 600)")
    p.add_argument("--phases", default=",".join(PHASES), help="a subset, e.g. fit,base_2048 for a rerun")
    p.add_argument("--smoke", action="store_true", help="the CPU dry run: tiny shapes, fp32, eager")
    p.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)  # where the fit's checkpoints go (tests)
    p.add_argument("--inject-oom", default=os.environ.get(INJECT_ENV, ""),
                   help=argparse.SUPPRESS)  # the dry run's failures: machine,matmul,throughput,gau_memory,flex,fit_*
    table_flag(p, STORED)
    args = p.parse_args(argv)
    if args.table is not None:
        return print_tables(args.table, STORED, markdown)
    if args.out is None:
        p.error("--out DIR is required when OUT is not set (a lent machine returns only $OUT)")
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        p.error(f"unknown phases {sorted(unknown)} (of {', '.join(PHASES)})")
    args.budget = args.budget if args.budget is not None else (600.0 if args.smoke else 450.0)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.env = {**os.environ, INJECT_ENV: args.inject_oom, "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(x for x in (str(BENCH.parent), os.environ.get("PYTHONPATH")) if x)}
    report = {"started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", *sys.argv]), "out": str(args.out), "budget_s": args.budget,
              "smoke": args.smoke, "injected": args.inject_oom, "machine": None, "phases": {}, "complete": False}

    def save(what):
        report["wall_s"] = time.perf_counter() - t0
        write_json(args.out / "gpu_check.json", report)
        try:
            text = markdown(report)
            write_text(args.out / "gpu_check.md", text + "\n")
        except Exception as e:  # noqa: BLE001 (a report bug must not cost the JSON, nor the run)
            text = f"(no report: {error_text(e)}; the JSON is {args.out / 'gpu_check.json'})"
            report.setdefault("errors", []).append(f"markdown: {error_text(e)}")
        print(f"[check {report['wall_s']:.0f} s] {what}", file=sys.stderr, flush=True)
        return text

    save("started")
    args.wanted = args.phases.split(",")
    for phase in PHASES:
        if phase in args.wanted:
            try:
                report["phases"][phase] = run_phase(phase, args, report, t0)
            except Exception as e:  # noqa: BLE001 (this script's own failure: recorded, the next phase runs)
                report["phases"][phase] = {"status": f"error: {error_text(e)}"}
            save(f"{phase}: {report['phases'][phase]['status']}")
    report["complete"] = True
    report["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(save("done"))

if __name__ == "__main__":
    main()
