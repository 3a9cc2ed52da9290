"""Input and parameter gradient penalties against naive autograd computations
(kexue.fm/archives/7234 and 8796: input ε/2·‖∂L/∂e‖², parameter ε/2·‖∇_θ L‖²)."""

import pytest
import torch
from helpers import tiny_backbone
from torch.nn import functional as F

from kslm.optim.gradient_penalty import double_backward_attention, input_gradient_penalty, parameter_penalty_gradients

# float64, in train mode; without RoPE, whose rotation runs in fp32 and would blur the finite differences
NO_ROPE = {"vocab_size": 30, "tie_embeddings": False, "position": "none", "train": True}


def lm_loss(m, ids):
    logits = m.logits(m(ids[:, :-1]))
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_input_penalty_equals_naive_autograd(block):
    m, ids = tiny_backbone(block, **NO_ROPE), torch.randint(0, 30, (3, 9), generator=torch.Generator().manual_seed(1))
    captured = []
    h = m.embed.register_forward_hook(lambda mod, i, o: captured.append(o))
    with double_backward_attention():
        loss = lm_loss(m, ids)
    h.remove()
    pen = input_gradient_penalty(loss, captured[0], weight=0.7)
    # naive: the embedding output as a leaf tensor fed through the same network
    leaf = m.embed(ids[:, :-1]).detach().requires_grad_()
    h = m.embed.register_forward_hook(lambda mod, i, o: leaf)
    (g,) = torch.autograd.grad(lm_loss(m, ids), leaf)
    h.remove()
    naive = 0.5 * 0.7 * (g**2).sum()
    assert pen.item() == pytest.approx(naive.item(), rel=1e-12)
    # and its gradient (double backward) matches a central difference along a random direction of one matrix
    w = m.layers[0].sublayer.o_dense.weight if block == "gau" else m.layers[0].sublayer.o_proj.weight
    (gw,) = torch.autograd.grad(pen, w)
    direction = torch.randn_like(w)

    def pen_at(delta):
        with torch.no_grad():
            w.add_(delta)
        out = []
        hk = m.embed.register_forward_hook(lambda mod, i, o: out.append(o))
        with double_backward_attention():
            val = input_gradient_penalty(lm_loss(m, ids), out[0], 0.7).item()
        hk.remove()
        with torch.no_grad():
            w.sub_(delta)
        return val

    eps = 1e-5
    fd = (pen_at(eps * direction) - pen_at(-eps * direction)) / (2 * eps)
    assert (gw * direction).sum().item() == pytest.approx(fd, rel=1e-5)


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_parameter_penalty_finite_difference_matches_double_backward(block):
    m, ids = tiny_backbone(block, **NO_ROPE), torch.randint(0, 30, (3, 9), generator=torch.Generator().manual_seed(2))
    params = list(m.parameters())
    weight = 0.5
    loss = lm_loss(m, ids)
    before = [p.detach().clone() for p in params]
    grads, pen = parameter_penalty_gradients(loss, params, lambda: lm_loss(m, ids), weight, r=1e-4)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))  # parameters put back exactly
    # exact: ∇(L + ε/2‖∇L‖²) by double backward
    with double_backward_attention():
        loss = lm_loss(m, ids)
    g = torch.autograd.grad(loss, params, create_graph=True)
    sq = sum((x**2).sum() for x in g)
    exact = torch.autograd.grad(loss + 0.5 * weight * sq, params)
    assert pen.item() == pytest.approx(0.5 * weight * sq.item(), rel=1e-12)
    flat_fd, flat_exact = torch.cat([x.flatten() for x in grads]), torch.cat([x.flatten() for x in exact])
    assert ((flat_fd - flat_exact).norm() / flat_exact.norm()).item() < 1e-3
    plain = torch.cat([x.flatten() for x in torch.autograd.grad(lm_loss(m, ids), params)])
    assert ((flat_fd - plain).norm() / plain.norm()).item() > 1e-3  # the penalty term is not negligible here
