"""Exponentiated-gradient step-size adaptation against a float64 re-computation of its formula
(kexue.fm/archives/8968: ν_{t+1} = ν_t ⊙ exp(γ g_{t−1} ⊙ g_t), here RMS-normalised and clamped; arXiv 2202.00145)."""

import copy
import io

import numpy as np
import pytest
import torch

from kslm.optim import build_optimizer, state_bytes
from kslm.optim.eg import ExponentiatedGradient


def eg_sgd_reference(theta, grads, lr, gamma, gamma_s, gain_bounds=(0.1, 10.0), scale_bounds=(0.01, 100.0)):
    """EG over plain SGD (base update d = −lr·g) in numpy float64; returns θ, ν, s after the steps."""
    theta, nu, s, prev = theta.astype(np.float64).copy(), np.ones_like(theta, dtype=np.float64), 1.0, None
    rms = lambda x: np.sqrt(np.mean(x**2))  # noqa: E731
    for g in grads:
        d = -lr * g
        if prev is not None:
            cos = np.sum(-g * prev) / (np.linalg.norm(g) * np.linalg.norm(prev))
            s = float(np.clip(s * np.exp(gamma_s * cos), *scale_bounds))
            nu = np.clip(nu * np.exp(-gamma * g * prev / (rms(g) * rms(prev))), *gain_bounds)
        theta = theta + s * nu * d
        prev = d
    return theta, nu, s


def run_eg(theta0, grads, **eg):
    p = torch.nn.Parameter(torch.tensor(theta0))
    opt = ExponentiatedGradient(torch.optim.SGD([p], lr=0.1), **eg)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy(), opt.state[p]["eg_gain"].numpy(), opt.scale


@pytest.mark.parametrize("pattern", ["consistent", "alternating", "random"])
def test_eg_gains_follow_the_formula(pattern):
    rng = np.random.default_rng(0)
    theta0, g0 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    if pattern == "consistent":
        grads = [g0 * (1 + 0.1 * t) for t in range(6)]
    elif pattern == "alternating":
        grads = [g0 * (-1) ** t for t in range(6)]
    else:
        grads = [rng.normal(size=(4, 3)) for _ in range(6)]
    theta, nu, s = run_eg(theta0, grads, gain_lr=0.2, scale_lr=0.3)
    ref_theta, ref_nu, ref_s = eg_sgd_reference(theta0, grads, 0.1, 0.2, 0.3)
    np.testing.assert_allclose(nu, ref_nu, rtol=1e-12)
    np.testing.assert_allclose(theta, ref_theta, rtol=1e-12)
    assert s == pytest.approx(ref_s, rel=1e-12)
    if pattern == "consistent":  # same signs: every gain and the global scale rise
        assert (nu > 1).all() and s > 1
    elif pattern == "alternating":
        assert (nu < 1).all() and s < 1


def test_eg_gains_are_clamped():
    theta, nu, s = run_eg(np.zeros(5), [np.ones(5) * (-1) ** t for t in range(30)], gain_lr=1.0, scale_lr=1.0,
                          gain_bounds=(0.5, 2.0), scale_bounds=(0.25, 4.0))
    assert np.allclose(nu, 0.5) and s == 0.25


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = build_optimizer("eg_adamw", m, lr=1e-2, weight_decay=0.1, gain_lr=0.05, scale_lr=0.05)
    return m, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))


def _train(m, opt, sched, steps, start=0):
    for t in range(start, start + steps):
        x = torch.randn(16, 6, generator=torch.Generator().manual_seed(t))
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
        sched.step()


def test_eg_resume_from_state_dict_continues_identically():
    m, opt, sched = _model_and_opt()
    _train(m, opt, sched, 8)
    full = [p.detach().clone() for p in m.parameters()]
    m2, opt2, sched2 = _model_and_opt()
    _train(m2, opt2, sched2, 4)
    buf = io.BytesIO()
    torch.save({"model": m2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    m3, opt3, sched3 = _model_and_opt(seed=1)  # other init: everything must come from the checkpoint
    m3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    sched3.load_state_dict(saved["sched"])
    assert opt3.param_groups is opt3.base.param_groups and opt3.state is opt3.base.state
    assert opt3.scale == opt2.scale != 1.0
    _train(m3, opt3, sched3, 4, start=4)
    for a, b in zip(full, m3.parameters(), strict=True):
        assert torch.equal(a, b.detach())
    assert state_bytes(opt3) == state_bytes(opt2) > 0


def test_eg_state_is_flat_and_an_old_nested_state_still_loads():
    """One state dict per parameter (AdamW's exp_avg … beside eg_gain / eg_prev) and the scale in the param groups: the
    form torch.distributed.checkpoint saves and loads (fsdp2); a state written in the old nested form
    ({"base": AdamW's, "eg": {"scale"}}) resumes the same."""
    m, opt, sched = _model_and_opt()
    _train(m, opt, sched, 3)
    sd = copy.deepcopy(opt.state_dict())  # (the loads below would otherwise share, and step, opt's own tensors)
    assert set(sd) == {"state", "param_groups"}
    assert {"exp_avg", "exp_avg_sq", "step", "eg_gain", "eg_prev"} <= set(sd["state"][0])
    assert all(g["eg_scale"] == opt.scale != 1.0 for g in sd["param_groups"])
    base = {"state": {k: {n: v for n, v in st.items() if not n.startswith("eg_")} for k, st in sd["state"].items()},
            "param_groups": [{k: v for k, v in g.items() if k != "eg_scale"} for g in sd["param_groups"]]}
    old = {"state": {k: {n[3:]: v for n, v in st.items() if n.startswith("eg_")} for k, st in sd["state"].items()},
           "param_groups": base["param_groups"], "base": base, "eg": {"scale": opt.scale}}
    loaded = []
    for state in (sd, old):
        m2, opt2, sched2 = _model_and_opt(seed=1)
        m2.load_state_dict(m.state_dict())
        opt2.load_state_dict(copy.deepcopy(state))
        sched2.load_state_dict(sched.state_dict())
        _train(m2, opt2, sched2, 2, start=3)
        loaded.append([p.detach() for p in m2.parameters()])
    _train(m, opt, sched, 2, start=3)
    for a, b, c in zip(m.parameters(), *loaded, strict=True):
        assert torch.equal(a.detach(), b) and torch.equal(a.detach(), c)
