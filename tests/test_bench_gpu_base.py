"""The parts of the GPU check that must not lose a run, in this process and in seconds: the equal-parameter claim at the
real shapes (meta device), the datasheet peaks by exact name, a GEMM peak that keeps no result alive, the budget's alarm
and its estimates, the injected failures, a cleanup that never raises, children bounded by a hard deadline, and the
parsing and resume comparison of bench/gpu_fit.py. The dry run of the whole check (subprocesses) is
tests/test_bench_gpu_check.py."""

import argparse
import sys
import time
import weakref

import pytest
import torch
from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))


def test_llama_has_the_parameters_of_transformer_base():
    """At the real shapes (vocabulary 32,000): kslm Transformer-base, GAU-α-base and the Llama row within 1 %, with
    every FFN width a multiple of 64 (Llama counted by hand: tied V·d embedding; per layer q, k, v, o (4d²), SwiGLU
    (3·d·I), two RMSNorm gains; the final norm)."""
    from gpu_base import shapes

    from kslm.nn import Backbone, BackboneConfig

    s = shapes(argparse.Namespace(vocab=32000, seqs=[1024], mem_seqs=[4096], smoke=False))
    with torch.device("meta"):
        counts = [Backbone(BackboneConfig(**s[m])).num_parameters() for m in ("kslm-transformer", "kslm-gau")]
    ll = s["llama"]
    d = ll["d"]
    counts.append(ll["vocab"] * d + ll["layers"] * (4 * d * d + 3 * d * ll["intermediate"] + 2 * d) + d)
    assert ll["intermediate"] == 2112 and max(counts) / min(counts) < 1.01, counts
    assert all(w % 64 == 0 for w in (ll["intermediate"], s["kslm-transformer"]["d_ff"],
                                      s["kslm-gau"]["expansion"] * s["kslm-gau"]["d_model"]))


def test_datasheet_peaks_by_exact_device_name():
    from gpu_facts import datasheet_peak

    assert datasheet_peak("NVIDIA H100 80GB HBM3") == 989.4e12  # SXM
    assert datasheet_peak("NVIDIA H100 PCIe") == 756e12
    assert datasheet_peak("NVIDIA H100 NVL") == 835e12
    assert datasheet_peak("NVIDIA H200") == 989.4e12
    assert datasheet_peak("NVIDIA A100-SXM4-80GB") == 312e12
    for unknown in ("NVIDIA H200 NVL", "NVIDIA H100", "H100", "NVIDIA GeForce RTX 4090", "", None):
        assert datasheet_peak(unknown) is None, unknown


def test_gemm_peak_keeps_no_product_alive():
    """However many products a burst times, at most one output is alive at a time (the old list comprehension kept
    all k: 67-81 GiB at 4096³ on an H100)."""
    from gpu_measure import gemm_rate
    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveProducts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.refs, self.calls, self.most = [], 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket is torch.ops.aten.mm:
                self.calls += 1
                self.refs = [r for r in self.refs if r() is not None] + [weakref.ref(out)]
                self.most = max(self.most, len({id(r()) for r in self.refs if r() is not None}))
            return out

    with LiveProducts() as mode:
        rate = gemm_rate(64, 0.02, torch.device("cpu"), torch.float32)
    assert rate > 0 and mode.calls > 20 and mode.most == 1, (mode.calls, mode.most)


def test_each_phase_gets_its_share_of_the_budget_among_the_phases_run():
    from gpu_check import PHASES, share_end

    assert [share_end(p, PHASES) for p in ("base_1024", "fit", "base_2048")] == pytest.approx([0.45, 0.85, 1.0])
    assert share_end("fit", ["fit"]) == 1.0  # a rerun of one phase gets the whole budget
    assert share_end("fit", ["machine", "fit", "base_2048"]) == pytest.approx(0.40 / 0.55)


def test_budget_alarm_stops_the_measurement_in_flight():
    from gpu_budget import Budget, BudgetExceeded

    budget = Budget(0.3)
    t0 = time.perf_counter()
    with pytest.raises(BudgetExceeded):
        with budget.bounded("compiled:x"):
            while time.perf_counter() - t0 < 10:  # a measurement that would overrun the slot
                sum(range(1000))
    assert time.perf_counter() - t0 < 2 and budget.costs["compiled:x"] == pytest.approx(0.3, abs=0.5)
    assert budget.refuses("compiled:x").startswith("skipped: budget")
    with pytest.raises(BudgetExceeded):  # nothing starts once the time is spent
        with budget.bounded("eager:x"):
            pass


def test_budget_refuses_what_the_previous_measurement_says_will_not_fit():
    from gpu_budget import Budget

    budget = Budget(60, floor={"compiled:llama": 30})
    budget.costs["compiled:kslm"] = 100.0
    assert budget.refuses("compiled:kslm").startswith("skipped: budget (60 s left, ≈ 100 s needed")
    assert budget.refuses("compiled:llama") is None and budget.refuses("compiled:llama", 3.0) is not None
    assert budget.refuses("eager:kslm") is None


def test_injector_raises_cuda_out_of_memory_once_per_kind(monkeypatch):
    from gpu_budget import INJECT_ENV, Injector

    monkeypatch.setenv(INJECT_ENV, "matmul, fit_full")
    inject = Injector()
    inject("throughput")
    with pytest.raises(torch.cuda.OutOfMemoryError, match="CUDA out of memory"):
        inject("matmul")
    inject("matmul")  # the second GEMM size runs
    assert inject.pending == {"fit_full"}


def test_cleanup_never_raises(monkeypatch):
    from gpu_measure import cleanup

    def broken():
        raise AttributeError("partially initialized module 'torch._dynamo' has no attribute 'utils'")

    monkeypatch.setattr(torch._dynamo, "reset", broken)
    assert cleanup(torch.device("cpu"), dynamo=True).startswith("AttributeError: partially initialized")
    assert cleanup(torch.device("cpu")) is None


def test_a_child_past_its_deadline_is_killed_and_a_kslm_fit_gets_sigterm_first(tmp_path):
    from gpu_budget import run_bounded

    t0 = time.perf_counter()
    res = run_bounded([sys.executable, "-c", "import time; time.sleep(60)"], time.perf_counter() + 1)
    assert res["killed"] == "deadline (SIGKILL)" and res["rc"] != 0 and time.perf_counter() - t0 < 15
    saved = tmp_path / "saved"
    code = ("import signal, sys, time, pathlib\n"
            f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(saved)!r}).write_text('ckpt'), sys.exit(130)))\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    res = run_bounded([sys.executable, "-c", code], time.perf_counter() + 2.5, grace=10, term_first=True, own_group=False)
    assert res == {**res, "rc": 130, "killed": "deadline"} and saved.read_text() == "ckpt"


def test_a_phase_killed_at_its_hard_limit_takes_its_kslm_fit_with_it(tmp_path):
    """gpu_fit.py runs kslm fit in its own process group, so the check's kill of gpu_fit.py's group (at the phase's
    hard limit) ends the fit too: nothing keeps the GPU busy under the next phase."""
    import os

    from gpu_budget import run_bounded

    pid, fit, phase = tmp_path / "pid", tmp_path / "fit.py", tmp_path / "phase.py"
    fit.write_text(f"import os, pathlib, time\npathlib.Path({str(pid)!r}).write_text(str(os.getpid()))\ntime.sleep(60)\n")
    phase.write_text(f"import sys, time\nsys.path.insert(0, {str(REPO / 'bench')!r})\nfrom gpu_budget import run_bounded\n"
                     f"run_bounded([sys.executable, {str(fit)!r}], time.perf_counter() + 60, own_group=False)\n")
    res = run_bounded([sys.executable, str(phase)], time.perf_counter() + 3)
    assert res["killed"] == "deadline (SIGKILL)"
    fit_pid = int(pid.read_text())
    for _ in range(50):  # reaped by init once killed
        try:
            os.kill(fit_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(fit_pid, 9)
        pytest.fail("the nested fit outlived its phase")


LOG = """GPU available: True (cuda), used: True
kslm: 87.8 M parameters (87.8 M trainable, 351 MB); modules: 98 in train mode, 0 in eval mode
step 10/300 | loss 5.912 | lr 3.0e-04 | 41,234 tok/s | ETA 1m02s
step 20/300 | loss 3.5 | lr 6.0e-04 | 402,113 tok/s | ETA 20s
step 30/300 | loss 2.75 | lr 6.0e-04 | 398,000 tok/s | ETA 19s
validation step 150: val/loss 2.401 | val/ppl 11.03
kslm: 399,870 tokens/s per device, 211,543.2 GFLOP/s, MFU 21.4%
"""


def test_fit_log_parsing_and_summary():
    from gpu_fit import parse_log, summarise

    run = parse_log(LOG)
    assert [(r["step"], r["loss"], r["tok_s"]) for r in run["lines"]] == [
        (10, 5.912, 41234.0), (20, 3.5, 402113.0), (30, 2.75, 398000.0)]
    assert run["val"] == [{"step": 150, "loss": 2.401}] and run["params"] == "87.8 M"
    assert run["tokens_per_s"] == 399870.0 and run["flops_per_s"] == pytest.approx(211543.2e9)
    assert run["lightning_mfu"] == "MFU 21.4%" and "used: True" in run["gpu_line"]
    summarise(run, 10, 16384, 989.4e12)
    assert run["loss_falls"] and (run["loss_first"], run["loss_last"]) == (5.912, 2.75)
    assert run["mfu_datasheet"] == pytest.approx(211543.2e9 / 989.4e12)
    steady = (402113 + 398000) / 2  # the median of the later windows; the first window's excess is the compile
    assert run["first_window_extra_s"] == pytest.approx(10 * 16384 * (1 / 41234 - 1 / steady))


@pytest.mark.parametrize("noise,verdict", [(0.0, "bitwise"), (1e-3, "within tolerance"), (0.3, "differs")])
def test_resume_check_verdicts(tmp_path, noise, verdict):
    """The resumed weights against the uninterrupted ones, as a fraction of what the segment N → 2N moved them."""
    from gpu_fit import compare

    gen = torch.Generator().manual_seed(0)
    w_n = {"a": torch.randn(50, 20, generator=gen), "b": torch.randn(7, generator=gen), "step": torch.tensor(3)}
    w_2n = {k: v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in w_n.items()}
    resumed = {k: v + noise * 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
               for k, v in w_2n.items()}
    paths = []
    for name, sd, step in (("full", w_2n, 20), ("stop", w_n, 10), ("resume", resumed, 20)):
        paths.append(tmp_path / f"{name}.ckpt")
        torch.save({"state_dict": sd, "global_step": step, "optimizer_states": [{"state": {}}]}, paths[-1])
    runs = {"full": {"lines": [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.5}]},
            "resume": {"lines": [{"step": 20, "loss": 2.5 + noise / 10}]}}
    c = compare(*paths, runs, 10)
    assert c["verdict"] == verdict and c["global_steps"] == [20, 10, 20] and c["loss_steps_compared"] == [20]
    assert c["rel_diff"] == pytest.approx(noise, rel=0.2, abs=1e-12)
    assert c["weights_bitwise_equal"] == (noise == 0)


@pytest.mark.parametrize("compile_failure", [True, False])
def test_a_failed_full_fit_falls_back_to_eager_after_a_compile_failure_and_else_ends_the_fit(tmp_path, monkeypatch,
                                                                                               compile_failure):
    """The full run's process fails: a compile failure is retried once without compile (the training path, rather
    than nothing); any other failure skips the stop and resume runs, which would fail alike."""
    import gpu_fit
    from gpu_budget import Budget, Injector

    args = argparse.Namespace(steps=5, smoke=False, config="configs/lm/transformer-base.yaml", warmup=0, limit_val=2,
                              log_every=5, batch=4, out=tmp_path)
    calls = []

    def launch(name, argv, args_, work, env, budget):  # gpu_fit.launch's signature
        eager = "--model.compile" in argv and argv[argv.index("--model.compile") + 1] == "false"
        calls.append(name + (" eager" if eager else ""))
        if len(calls) == 1:
            return {"rc": 1, "killed": None, "error": "exit 1: boom", "lines": [], "val": [], "wall_s": 1.0,
                    "compile_failure": compile_failure}
        return {"rc": 1 if name == "stop" else 0, "killed": None, "lines": [], "val": [], "wall_s": 1.0,
                **({"error": "exit 1: stop failed"} if name == "stop" else {})}

    monkeypatch.setattr(gpu_fit, "launch", launch)
    monkeypatch.setattr(gpu_fit, "corpus", lambda work, smoke: (work / "corpus.txt").write_text("x"))
    report = {"runs": {}, "errors": [], "skipped": [], "resume_check": None}
    gpu_fit.steps(args, tmp_path, Budget(60), Injector(""), report, lambda what: None, 128, None)
    if compile_failure:
        assert calls == ["full", "full eager", "stop eager"], calls  # stop and resume run as the full run did
        assert report["runs"]["full"]["compile_fallback"] and report["errors"][0]["what"] == "full (compiled)"
        assert report["skipped"][0] == "resume: no checkpoint from the stop run"
    else:
        assert calls == ["full"]
        assert report["skipped"][:2] == ["stop: not started, the full run failed (fit.log)",
                                         "resume: not started, the full run failed (fit.log)"]
