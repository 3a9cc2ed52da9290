"""The heat-equation auxiliary objective (kslm/nn/heat.py) against a naive float64 loop, and through `kslm fit`."""

import pytest
import torch
from helpers import run_cli, scalars, tiny_args

from kslm.nn.heat import HeatPredictor, nearest_visible


def naive_heat_loss(hidden, target, masked, A, mode, K):
    """Per masked position: scan for the nearest visible neighbours, apply matrix powers of I ± A (float64)."""
    B, T, d = hidden.shape
    eye = torch.eye(d, dtype=torch.float64)
    losses = []
    for b in range(B):
        for t in range(T):
            if not masked[b, t]:
                continue
            k = next((j for j in range(1, K + 1) if t - j >= 0 and not masked[b, t - j]), None)
            m = next((j for j in range(1, K + 1) if t + j < T and not masked[b, t + j]), None)
            if mode == "extrapolate":
                m = None
            if k is None and m is None:
                continue
            left = torch.linalg.matrix_power(eye + A, k) @ hidden[b, t - k] if k else None
            right = torch.linalg.matrix_power(eye - A, m) @ hidden[b, t + m] if m else None
            if left is not None and right is not None:
                pred = (m * left + k * right) / (k + m)
            else:
                pred = left if left is not None else right
            z = target[b, t]
            z = (z - z.mean()) / torch.sqrt(z.var(unbiased=False) + 1e-5)
            losses.append(((pred - z) ** 2).mean())
    return torch.stack(losses).mean(), len(losses)


@pytest.mark.parametrize("mode", ["interpolate", "extrapolate"])
def test_heat_loss_matches_naive_loop(mode):
    g = torch.Generator().manual_seed(0)
    B, T, d, K = 3, 17, 5, 3
    hidden = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    target = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    masked = torch.rand(B, T, generator=g) < 0.45
    masked[0, :5] = True  # a run longer than K at the start: no left neighbour within reach
    masked[1, -2:] = True  # at the end: no right neighbour
    heat = HeatPredictor(d, mode, max_distance=K).double()
    with torch.no_grad():
        heat.A.copy_(0.2 * torch.randn(d, d, generator=g, dtype=torch.float64))
    got, n = heat.loss(hidden, target, masked)
    want, n_want = naive_heat_loss(hidden, target, masked, heat.A.detach(), mode, K)
    assert n == n_want and n > 10
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_nearest_visible_distances_and_gradients():
    masked = torch.tensor([[True, False, True, True, False, True]])
    k, m = nearest_visible(masked)
    assert k.tolist() == [[0, 0, 1, 2, 0, 1]] and m.tolist() == [[1, 0, 2, 1, 0, 0]]
    # A = 0, interpolation: the prediction is the linear interpolation of the neighbours
    heat = HeatPredictor(1, "interpolate")
    hidden = torch.tensor([[[0.0], [3.0], [0.0], [0.0], [6.0], [0.0]]], requires_grad=True)
    pred, (b, t) = heat(hidden, masked)
    assert t.tolist() == [0, 2, 3, 5]
    torch.testing.assert_close(pred[:, 0], torch.tensor([3.0, 4.0, 5.0, 6.0]))
    loss, _ = heat.loss(hidden, torch.randn(1, 6, 1), masked)
    loss.backward()  # the target is stop-gradient, the neighbours and A get gradients
    assert hidden.grad[0, 1].abs() > 0 and heat.A.grad is not None


def test_fit_with_heat_objective_logs_aux_loss_and_resumes(small_corpus, workdir, capsys):
    extra = ["--model.backbone.mask", "bidirectional", "--model.aux_objective", "heat", "--model.aux_weight", "0.5",
             "--trainer.log_every_n_steps", "1", "--model.optim.total_steps", "6"]
    code, err = run_cli(["fit", *tiny_args(small_corpus, workdir, *extra, steps=3)], capsys)
    assert code == 0, err
    tags = scalars(workdir / "logs")
    assert {"train/aux_loss", "train/mlm_loss", "val/loss"} <= set(tags)
    assert 0 < tags["train/aux_loss"] < 10
    ckpt = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"]["heat.A"].abs().sum() > 0  # the map trained and is saved
    resume = tiny_args(small_corpus, workdir, *extra, "--ckpt_path", str(workdir / "ckpt" / "last.ckpt"), steps=6)
    code, err = run_cli(["fit", *resume], capsys)
    assert code == 0, err
    assert torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 6


@pytest.mark.parametrize("extra,needle", [
    (["--model.aux_objective", "heat"], "bidirectional"),  # the shipped LM config is causal
    (["--model.backbone.mask", "bidirectional", "--model.aux_objective", "heat", "--model.aux_weight", "-1"], "aux_weight"),
    (["--model.backbone.mask", "bidirectional", "--model.aux_objective", "heet"], "aux_objective"),
])
def test_bad_heat_options_are_one_line_errors(small_corpus, workdir, capsys, extra, needle):
    code, err = run_cli(["fit", *tiny_args(small_corpus, workdir), *extra], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kslm: error:") and needle in lines[0], err
