"""bench/gpu_base.py --smoke: the GPU benchmark's code paths (kslm Transformer-base / GAU-α-base shapes shrunk, HF Llama,
the GAU memory sweep, the JSON and the --table reprint) on the CPU in one subprocess (≈ 20 s on 2 idle cores), and the
equal-parameter claim at the real shapes (meta device)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu_base.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "bench/gpu_base.py", "--smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8")), proc.stdout, out, env


def test_smoke_measures_every_model_and_the_memory_sweep(smoke):
    report, stdout, _, _ = smoke
    runs = {(r["model"], r["seq"]): r for r in report["runs"]}
    assert set(runs) == {(m, t) for m in ("kslm-transformer", "kslm-gau", "llama") for t in (32, 64)}
    for r in runs.values():
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and 0 < r["mfu_measured"] < 1.5 and r["batch"] * r["seq"] == 128
        assert r["mfu_datasheet"] is None  # a CPU has no datasheet peak
        assert r["flops_per_s"] == pytest.approx(r["flops_per_token"] * 128 / (r["step_ms"] / 1e3))
    assert [(m["kernel"], m["seq"]) for m in report["gau_memory"]] == [
        (k, t) for t in (32, 64) for k in ("linear_memory", "dense")]
    assert all("error" not in m for m in report["gau_memory"])
    # one seeded model per T: the two kernels give the same loss and gradients in fp32
    assert [c["seq"] for c in report["gau_loss_check"]] == [32, 64]
    assert all(c["agree"] and c["rel_diff"] < 1e-5 and c["grad_rel_diff"] < 1e-4 for c in report["gau_loss_check"])
    assert report["complete"] and not report["errors"] and not report["skipped"]
    row = runs[("llama", 64)]
    assert f"{row['tokens_per_s']:,.0f}" in stdout and "| llama |" in stdout


def test_table_reprints_the_json(smoke):
    report, _, out, env = smoke
    proc = subprocess.run([sys.executable, "bench/gpu_base.py", "--table", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for r in report["runs"]:
        assert f"| {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} |" in proc.stdout


def test_llama_has_the_parameters_of_transformer_base():
    """At the real shapes (vocabulary 32,000): kslm Transformer-base, GAU-α-base and the Llama row within 1 %, with
    every FFN width a multiple of 64 (Llama counted by hand: tied V·d embedding; per layer q, k, v, o (4d²), SwiGLU
    (3·d·I), two RMSNorm gains; the final norm)."""
    import argparse

    import torch
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
