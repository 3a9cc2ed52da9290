"""Amos and the Amos-derived AdamW recipe against float64 re-computations of their formulas (arXiv 2210.11693;
kexue.fm/archives/9344: step α₀‖ε₀‖D(t)·u_t/‖u_t‖, decay ρ_t = α₀²/2·D(t))."""

import math

import numpy as np
import pytest
import torch

from kslm.nn import Backbone, BackboneConfig
from kslm.optim import amos_groups, build_optimizer, state_bytes
from kslm.optim.amos import Amos
from kslm.optim.amos_adamw import AmosDecay
from kslm.optim.roles import parameter_roles


def amos_reference(theta, grads, eta, xi, axes, beta=0.999, c=0.25, d=0.25, extra_l2=0.0, momentum=0.0, clip=None):
    """jestimator `scale_by_amos` (+ optax.clip, optax.ema(debias=False)) in numpy float64."""
    theta = theta.astype(np.float64).copy()
    v = b = m = None
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if clip is not None:
            g = np.clip(g, -clip, clip)
        g2 = np.mean(g**2, axis=axes, keepdims=True) if axes else g**2
        if axes == (0, 1):
            g2 = np.mean(g**2)
        v = g2 * (1 - beta) if v is None else v * beta + g2 * (1 - beta)
        b = np.zeros_like(v) if b is None else b
        r = (1 - beta**t) / np.maximum(v, 2.0**-125)
        gamma = xi**2 * r * g2 / np.sqrt(1 + c * np.sqrt(xi) * b)
        init_lr = xi * eta
        upd = (-init_lr * np.sqrt(r) * g - (0.5 * gamma + extra_l2) * theta) / (1 + d * np.sqrt(init_lr) * b)
        b = b + gamma * (1 + b)
        if momentum:
            m = (1 - momentum) * upd if m is None else momentum * m + (1 - momentum) * upd
            upd = m
        theta = theta + upd
    return theta, v, b


@pytest.mark.parametrize("slot,axes,slot_shape", [("row", (1,), (6, 1)), ("column", (0,), (1, 5)), ("scalar", (0, 1), ())])
@pytest.mark.parametrize("opts", [{}, {"momentum": 0.9, "clip_value": 0.5, "extra_l2": 0.01}], ids=["plain", "momentum-clip-l2"])
def test_amos_steps_match_float64_jestimator_equations(slot, axes, slot_shape, opts):
    gen = torch.Generator().manual_seed(0)
    theta0 = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(6, 5, generator=gen, dtype=torch.float64) * s for s in (1.0, 0.3, 2.0)]
    p = torch.nn.Parameter(theta0.clone())
    opt = Amos([{"params": [p], "eta": 0.2, "slot": slot}], lr=0.05, beta=0.9, c_coef=0.3, d_coef=0.2, **opts)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    ref, v, b = amos_reference(theta0.numpy(), [g.numpy() for g in grads], 0.2, 0.05, axes, beta=0.9, c=0.3, d=0.2,
                               extra_l2=opts.get("extra_l2", 0.0), momentum=opts.get("momentum", 0.0),
                               clip=opts.get("clip_value"))
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-12, atol=1e-14)
    state = opt.state[p]
    assert tuple(state["v"].shape) == slot_shape and tuple(state["b"].shape) == slot_shape
    np.testing.assert_allclose(state["b"].numpy(), np.reshape(b, slot_shape), rtol=1e-6)
    assert not np.allclose(ref, theta0.numpy())


def test_amos_slot_memory_is_the_factorised_size():
    cfg = BackboneConfig(block="transformer", vocab_size=100, d_model=32, n_heads=2, n_layers=2, tie_embeddings=False)
    m = Backbone(cfg)
    opt = build_optimizer("amos", m, lr=0.01)
    adamw = build_optimizer("adamw", m, lr=1e-3)
    m.logits(m(torch.randint(0, 100, (2, 8)))).sum().backward()
    opt.step()
    adamw.step()
    expected = 0
    for r in parameter_roles(m):
        slot = r.param.shape[0] if r.slot == "row" else 1  # v and b: one number per row / one scalar
        expected += 2 * slot * 4  # fp32; the step counter is a Python int
    assert state_bytes(opt) == expected
    n = sum(p.numel() for p in m.parameters())
    assert state_bytes(adamw) >= 2 * n * 4
    assert state_bytes(opt) <= 0.51 * state_bytes(adamw)


def test_roles_give_jestimator_eta_from_the_config():
    d, d_ff, V = 32, 96, 100
    m = Backbone(BackboneConfig(block="transformer", vocab_size=V, d_model=d, d_ff=d_ff, n_heads=2, n_layers=1))
    roles = {r.name: r for r in parameter_roles(m)}
    assert roles["embed.weight"].eta == pytest.approx(math.sqrt(2 / d)) and roles["embed.weight"].slot == "row"
    assert roles["layers.0.sublayer.qkv.weight"].eta == pytest.approx(math.sqrt(1 / d))
    assert roles["layers.1.sublayer.fc2.weight"].role == "ffn_out"
    assert roles["layers.1.sublayer.fc2.weight"].eta == pytest.approx(math.sqrt(2 / d_ff))
    assert roles["final_norm.weight"].eta == 1.0 and roles["final_norm.bias"].eta == 0.5
    g = Backbone(BackboneConfig(block="gau", vocab_size=V, d_model=d, expansion=2, qk_dim=16, n_layers=1))
    groles = {r.name: r for r in parameter_roles(g)}
    assert groles["layers.0.sublayer.o_dense.weight"].eta == pytest.approx(math.sqrt(2 / (2 * d)))
    assert groles["layers.0.sublayer.q_scale"].role == "gain" and groles["layers.0.sublayer.q_offset"].role == "bias"
    assert sum(len(gr["params"]) for gr in amos_groups(g)) == len(list(g.parameters()))  # tied head counted once


def test_amos_adamw_update_norm_is_alpha0_eps0_D_per_tensor():
    torch.manual_seed(0)
    m = Backbone(BackboneConfig(block="gau", vocab_size=60, d_model=16, qk_dim=8, n_layers=1, tie_embeddings=False))
    alpha0, T = 0.01, 5
    opt = build_optimizer("amos_adamw", m, lr=alpha0)
    decay = AmosDecay(alpha0, "constant_rate", half_life=3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    roles = list(parameter_roles(m))
    for t in range(T):
        for gr in opt.param_groups:
            gr["weight_decay"] = 0.0  # measure the direction step alone; the decay is checked below
        before = [r.param.detach().clone() for r in roles]
        m.logits(m(torch.randint(0, 60, (2, 6)))).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
        D = 1 / (alpha0 * ((math.sqrt(2) - 1) / (alpha0 * 3)) * t + 1) ** 2
        for r, b0 in zip(roles, before, strict=True):
            k = r.param.numel()
            eps0 = math.sqrt(k) * 0.5 if r.role in ("bias", "gain") else math.sqrt(2 * k) * r.eta
            assert (r.param.detach() - b0).norm().item() == pytest.approx(alpha0 * eps0 * D, rel=1e-4), (r.name, t)
        sched.step()
    assert decay.decay(3) == pytest.approx(0.5)  # half_life: D = ½ after 3 steps
    inv = AmosDecay(alpha0, "inverse_time", p=2.0)
    assert inv.decay(10) == pytest.approx(1 / (2 * alpha0 * 2.0 * 10 + 1))


def test_amos_adamw_decay_is_rho_t_and_gains_are_exempt():
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    alpha0 = 0.02
    opt = build_optimizer("amos_adamw", m, lr=alpha0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, AmosDecay(alpha0, "inverse_time", p=5.0))
    sched.step()  # t = 1: lr = α₀·D(1)
    D = 1 / (2 * alpha0 * 5.0 + 1)
    W = m[0].weight.detach().clone()
    gain = m[1].weight.detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)  # u = 0: only the decay moves θ
    opt.step()
    assert torch.allclose(m[0].weight.detach(), W * (1 - alpha0**2 / 2 * D), rtol=0, atol=1e-7)
    assert torch.equal(m[1].weight.detach(), gain)
