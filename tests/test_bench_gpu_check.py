"""The CPU dry run of the GPU check (bench/gpu_check.py, bench/gpu_check.sh): its control flow with the smoke shapes,
as on a lent GPU: an out-of-memory error injected into each phase is recorded with its phase and the run goes on, a
tiny budget still writes a complete JSON, and everything lands under --out. One full run (≈ 50 s on 2 idle cores:
two bench/gpu_base.py smokes, three `kslm fit` processes) and two runs of a few seconds."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

EXPECTED = {"gpu_check.json", "gpu_check.md", "base_1024.json", "base_2048.json", "fit.json", "fit.log"}


def env(**extra):
    out = {k: v for k, v in os.environ.items() if k not in ("OUT", "KSLM_GPU_CHECK_INJECT")}
    return {**out, "OMP_NUM_THREADS": "1", **extra,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    results = sorted((REPO / "bench" / "results").iterdir())
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(tmp / "out"), "--work",
                           str(tmp / "work"), "--inject-oom", "matmul,throughput,gau_memory"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted((REPO / "bench" / "results").iterdir()) == results  # nothing written into the repository
    return json.loads((tmp / "out" / "gpu_check.json").read_text(encoding="utf-8")), proc, tmp / "out"


def test_everything_lands_under_out(dry_run):
    report, proc, out = dry_run
    assert {p.name for p in out.iterdir()} == EXPECTED and report["complete"] and report["out"] == str(out)
    assert list(report["phases"]) == ["machine", "base_1024", "fit", "base_2048"]
    assert all(p["status"] == "ok" for p in report["phases"].values()), report["phases"]
    assert (out / "gpu_check.md").read_text(encoding="utf-8").strip() in proc.stdout  # printed as well


def test_injected_out_of_memory_errors_are_recorded_and_the_run_goes_on(dry_run):
    report = dry_run[0]
    first = report["phases"]["base_1024"]["report"]
    for phase, seq in (("base_1024", 32), ("base_2048", 64)):
        base = report["phases"][phase]["report"]
        assert base["complete"]
        errors = {(e["phase"], e["what"]) for e in base["errors"]}
        assert ("throughput", f"kslm-transformer eager T {seq}") in errors
        assert all("OutOfMemoryError: CUDA out of memory" in e["error"] for e in base["errors"])
        # the second GEMM size and the other models ran: their MFU is against the surviving 256³ peak, which T 2048
        # takes from T 1024's report rather than measuring it again
        assert list(base["matmul"]["per_size"]) == ["256"] and base["matmul"]["peak_flops"] == first["matmul"]["peak_flops"] > 0
        runs = {r["model"]: r for r in base["runs"]}
        assert "error" in runs["kslm-transformer"] and all(runs[m]["tokens_per_s"] > 0 for m in ("kslm-gau", "llama"))
        assert all(0 < runs[m]["mfu_measured"] < 1.5 and runs[m]["mfu_datasheet"] is None for m in ("kslm-gau", "llama"))
        assert runs["llama"]["batch"] * seq == 128
    assert ("matmul", "GEMM 128³") in {(e["phase"], e["what"]) for e in first["errors"]}
    assert report["phases"]["base_2048"]["report"]["matmul"]["from"].endswith("base_1024.json")
    sweep = report["phases"]["base_1024"]["report"]
    assert [(m["kernel"], m["seq"], "error" in m) for m in sweep["gau_memory"]] == [
        ("linear_memory", 32, True), ("dense", 32, False), ("linear_memory", 64, False), ("dense", 64, False)]
    (check,) = sweep["gau_loss_check"]  # T 32 lost its linear_memory row; T 64 compares the kernels on one seeded model
    assert check["seq"] == 64 and check["agree"] and check["rel_diff"] < 1e-5 and check["grad_rel_diff"] < 1e-4
    md = dry_run[2].joinpath("gpu_check.md").read_text(encoding="utf-8")
    assert "base_1024 / throughput / kslm-transformer eager T 32: OutOfMemoryError" in md


def test_the_fit_trains_checkpoints_and_resumes_exactly(dry_run):
    fit = dry_run[0]["phases"]["fit"]["report"]
    assert fit["complete"] and not fit["errors"] and not fit["skipped"]
    full, stop, resume = (fit["runs"][k] for k in ("full", "stop", "resume"))
    assert full["rc"] == stop["rc"] == resume["rc"] == 0
    assert full["loss_falls"] and full["loss_last"] < full["loss_first"] and full["tokens_per_s"] > 0
    assert [full["checkpoint"]["global_step"], stop["checkpoint"]["global_step"], resume["checkpoint"]["global_step"]] == [12, 6, 12]
    assert [r["step"] for r in resume["lines"]] == [9, 12]  # the resumed run logs from step N on
    c = fit["resume_check"]
    assert c["verdict"] == "bitwise" and c["weights_bitwise_equal"] and c["optimizer_bitwise_equal"]
    assert c["rel_diff"] == 0 and c["max_loss_diff"] == 0 and c["loss_steps_compared"] == [9, 12]
    assert "===== resume:" in (dry_run[2] / "fit.log").read_text(encoding="utf-8")


def test_the_tables_are_printed_again_from_the_stored_json(dry_run):
    out = dry_run[2]
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--table", str(out / "gpu_check.json")], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == (out / "gpu_check.md").read_text(encoding="utf-8").strip()
    proc = subprocess.run([sys.executable, "bench/gpu_base.py", "--table", str(out / "base_1024.json")], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for r in dry_run[0]["phases"]["base_1024"]["report"]["runs"]:
        assert (f"| {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} |" if "tokens_per_s" in r else r["error"]) in proc.stdout


def test_a_tiny_budget_still_writes_a_complete_json_through_the_wrapper(tmp_path):
    out = tmp_path / "slot" / "out"
    proc = subprocess.run(["bash", "bench/gpu_check.sh", str(out), "--smoke", "--budget", "1"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    assert report["complete"] and report["phases"]["machine"]["status"] == "ok" and report["machine"]["torch"]
    assert [report["phases"][p]["status"].split(" (")[0] for p in ("base_1024", "fit", "base_2048")] == ["skipped: budget"] * 3
    assert {p.name for p in out.iterdir()} == {"gpu_check.json", "gpu_check.md", "gpu_check.log"}
    assert "| base_1024 | skipped: budget" in (out / "gpu_check.log").read_text(encoding="utf-8")


def test_injected_failures_in_the_machine_and_fit_phases(tmp_path):
    """The fit's first two runs fail (injected before their processes start), so there is nothing to resume from:
    each failure is recorded with its phase, the resume and its check are skipped, and the check exits 0."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(out), "--work", str(tmp_path / "w"),
                           "--phases", "machine,fit"], cwd=REPO, env=env(KSLM_GPU_CHECK_INJECT="machine,fit_full,fit_stop"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    assert report["complete"] and list(report["phases"]) == ["machine", "fit"] and report["machine"] is None
    assert report["phases"]["machine"]["status"].startswith("error: OutOfMemoryError: CUDA out of memory")
    fit = report["phases"]["fit"]["report"]
    assert report["phases"]["fit"]["status"] == "ok" and fit["complete"]
    assert [(e["phase"], e["what"]) for e in fit["errors"]] == [("fit", "full"), ("fit", "stop")]
    assert fit["skipped"] == ["resume: no checkpoint from the stop run", "resume check: needs the full, stop and resume runs"]


def test_out_is_required_where_out_is_not_set():
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke"], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--out DIR is required" in proc.stderr
