"""DeepNorm (kexue.fm/archives/8978; arXiv 2203.00555: x_{l+1} = LN(α·x_l + F(x_l)), α = (2N)^{1/4}, β = (8N)^{−1/4}):
constants, where β applies, where α sits, how Backbone derives them."""

import math

import pytest
import torch
from torch import nn

from kslm.nn import Backbone, BackboneConfig
from kslm.nn.residual import Residual, deepnorm_constants

# ---------------------------------------------------------------- constants


@pytest.mark.parametrize(
    "N,alpha,beta", [(6, 1.861, 0.380), (12, 2.213, 0.319), (24, 2.632, 0.269), (48, 3.130, 0.226)]
)
@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_constants_match_torchscale_table(N, alpha, beta, arch):
    a, b = deepnorm_constants(N, arch)
    assert abs(a - alpha) < 5e-4 and abs(b - beta) < 5e-4, (a, b)


@pytest.mark.parametrize("N", [1, 3, 7.5, 100, 1000])
def test_decoder_formula(N):
    a, b = deepnorm_constants(N)
    assert a == pytest.approx(math.exp(math.log(2 * N) / 4), rel=1e-14)
    assert b == pytest.approx(math.exp(-math.log(8 * N) / 4), rel=1e-14)
    assert a * b == pytest.approx(1 / math.sqrt(2), rel=1e-14)  # (2N)^{1/4}(8N)^{-1/4} = 4^{-1/4}


@pytest.mark.parametrize("N,M", [(6, 6), (12, 6), (100, 100)])
def test_encoder_decoder_formulas(N, M):
    a, b = deepnorm_constants(N, "encdec_encoder", n_decoder_blocks=M)
    root = math.exp((4 * math.log(N) + math.log(M)) / 16)  # (N⁴M)^{1/16}
    assert a == pytest.approx(0.81 * root, rel=1e-14)
    assert b == pytest.approx(0.87 / root, rel=1e-14)  # the paper's 0.87 (torchscale code: 1.15)
    a, b = deepnorm_constants(N, "encdec_decoder", n_decoder_blocks=M)
    assert a == pytest.approx((3 * M) ** 0.25, rel=1e-14)
    assert b == pytest.approx((12 * M) ** -0.25, rel=1e-14)


def test_encdec_known_numbers():
    # N = M = 6: α_enc = 0.81·6^{5/16}, β_enc = 0.87·6^{-5/16}; α_dec = 18^{1/4}, β_dec = 72^{-1/4}
    a, b = deepnorm_constants(6, "encdec_encoder", n_decoder_blocks=6)
    assert round(a, 4) == 1.4179 and round(b, 4) == 0.4970
    a, b = deepnorm_constants(6, "encdec_decoder", n_decoder_blocks=6)
    assert round(a, 4) == 2.0598 and round(b, 4) == 0.3433


def test_bad_arguments_rejected():
    with pytest.raises(ValueError):
        deepnorm_constants(0)
    with pytest.raises(ValueError):
        deepnorm_constants(6, "encdec_encoder")
    with pytest.raises(ValueError):
        deepnorm_constants(6, "prefix-lm")


# ---------------------------------------------------------------- β: exactly which weights


def pair(block, n_layers, **kw):
    """A DeepNorm and a Post-Norm backbone from the same seed (identical draws, different scaling)."""
    models = []
    for norm in ("deepnorm", "post"):
        torch.manual_seed(1234)
        cfg = BackboneConfig(
            block=block, vocab_size=30, d_model=16, n_layers=n_layers, n_heads=2, d_ff=40, qk_dim=8, norm=norm, **kw
        )
        models.append(Backbone(cfg))
    return models


def expected_row_factor(name, shape, block, beta, d, e):
    """Per-row factor DeepNorm should apply to parameter `name`, written from torchscale (β on V, O, FFN; not Q, K) + GAU docs."""
    rows = torch.ones(shape[0], dtype=torch.float64)
    if block == "transformer":
        if name.endswith("qkv.weight"):
            rows[2 * d :] = beta  # fused [Q; K; V]: only the V slice
        elif name.endswith(("o_proj.weight", "fc1.weight", "fc2.weight")):
            rows[:] = beta
    else:
        if name.endswith("i_dense.weight"):
            rows[: 2 * e] = beta  # [U; V; Z]: U and V, never Z (which feeds Q and K)
        elif name.endswith("o_dense.weight"):
            rows[:] = beta
    return rows


@pytest.mark.parametrize(
    "block,n_layers,beta",
    [
        ("transformer", 3, (8 * 3) ** -0.25),  # N = n_layers blocks
        ("gau", 6, (8 * 3) ** -0.25),  # N = n_layers / 2 blocks
        ("gau", 5, (8 * 2.5) ** -0.25),
    ],
)
def test_beta_scales_exactly_the_value_output_and_ffn_weights(block, n_layers, beta):
    deep, post = pair(block, n_layers)
    d, e = 16, 32
    deep_sd, post_sd = deep.state_dict(), post.state_dict()
    assert deep_sd.keys() == post_sd.keys()
    n_scaled = 0
    for name, w in deep_sd.items():
        ref = post_sd[name]
        if w.dim() < 2:  # norms, γ/β of GAU: untouched
            assert torch.equal(w, ref), name
            continue
        rows = expected_row_factor(name, w.shape, block, beta, d, e)
        for r in range(w.shape[0]):
            if rows[r] == 1:
                assert torch.equal(w[r], ref[r]), (name, r)
            else:
                ratio = w[r].double() / ref[r].double()
                torch.testing.assert_close(ratio, torch.full_like(ratio, beta), rtol=1e-6, atol=0)
                n_scaled += 1
    per_layer = (16 + 16 + 40 + 16) if block == "transformer" else (2 * e + d)  # rows scaled per layer
    assert n_scaled == n_layers * per_layer


def test_pre_and_post_are_not_scaled():
    torch.manual_seed(5)
    pre = Backbone(BackboneConfig(vocab_size=30, d_model=16, n_layers=2, n_heads=2, norm="pre"))
    assert pre.beta == 1.0 and all(layer.alpha == 1.0 for layer in pre.layers)


# ---------------------------------------------------------------- α: inside the norm, on the skip path


class Affine(nn.Module):
    """A deterministic sub-layer F(x) = tanh(x A) with the (x, ctx) signature of the real ones."""

    def __init__(self, d):
        super().__init__()
        self.A = nn.Parameter(torch.randn(d, d, dtype=torch.float64) / math.sqrt(d))

    def forward(self, x, ctx=None):
        return torch.tanh(x @ self.A)


def layernorm64(y, g, b, eps=1e-6):
    mu = y.mean(-1, keepdim=True)
    var = ((y - mu) ** 2).mean(-1, keepdim=True)  # biased variance
    return (y - mu) / torch.sqrt(var + eps) * g + b


def rmsnorm64(y, g, eps=1e-6):
    return y / torch.sqrt((y**2).mean(-1, keepdim=True) + eps) * g


@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm"])
def test_residual_alpha_multiplies_the_skip_inside_the_norm(norm_type):
    torch.manual_seed(0)
    d, alpha = 10, 2.213
    res = Residual(Affine(d), "deepnorm", d, norm_type, alpha).double()
    with torch.no_grad():  # non-trivial norm gain/offset
        res.norm.weight.copy_(1 + 0.3 * torch.randn(d))
        if norm_type == "layernorm":
            res.norm.bias.copy_(0.3 * torch.randn(d))
    x = torch.randn(3, 5, d, dtype=torch.float64) * 2
    fx = torch.tanh(x @ res.sublayer.A.detach())
    g = res.norm.weight.detach()
    norm = (
        (lambda y: layernorm64(y, g, res.norm.bias.detach()))
        if norm_type == "layernorm"
        else (lambda y: rmsnorm64(y, g))
    )
    with torch.no_grad():
        got = res(x, None)
    torch.testing.assert_close(got, norm(alpha * x + fx), rtol=0, atol=1e-12)
    assert (got - norm(x + alpha * fx)).abs().max() > 0.05  # the opposite wiring is distinguishable


def test_pre_and_post_wiring():
    torch.manual_seed(0)
    d = 10
    x = torch.randn(2, 4, d, dtype=torch.float64)
    ones, zeros = torch.ones(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    post = Residual(Affine(d), "post", d, "layernorm").double()
    pre = Residual(Affine(d), "pre", d, "layernorm").double()
    with torch.no_grad():
        torch.testing.assert_close(
            post(x, None), layernorm64(x + torch.tanh(x @ post.sublayer.A), ones, zeros), rtol=0, atol=1e-12
        )
        torch.testing.assert_close(
            pre(x, None), x + torch.tanh(layernorm64(x, ones, zeros) @ pre.sublayer.A), rtol=0, atol=1e-12
        )
    with pytest.raises(ValueError):
        Residual(Affine(d), "post", d, "layernorm", alpha=2.0)  # α ≠ 1 only with DeepNorm


# ---------------------------------------------------------------- Backbone derives α, β from n_layers


@pytest.mark.parametrize(
    "block,n_layers,mask,alpha,beta",
    [
        ("transformer", 6, "causal", 1.861, 0.380),  # table N = 6
        ("transformer", 12, "bidirectional", 2.213, 0.319),  # encoder-only: same formula, N = 12
        ("gau", 12, "causal", 1.861, 0.380),  # 12 GAU layers = 6 blocks
        ("gau", 24, "prefix", 2.213, 0.319),  # 24 GAU layers = 12 blocks
        ("gau", 48, "causal", 2.632, 0.269),
    ],
)
def test_backbone_derives_constants_from_n_layers(block, n_layers, mask, alpha, beta):
    cfg = BackboneConfig(
        block=block,
        vocab_size=10,
        d_model=8,
        n_layers=n_layers,
        n_heads=2,
        d_ff=8,
        qk_dim=4,
        expansion=1,
        norm="deepnorm",
        mask=mask,
    )
    a, b = cfg.deepnorm
    assert abs(a - alpha) < 5e-4 and abs(b - beta) < 5e-4
    model = Backbone(cfg)
    assert len(model.layers) == n_layers * (2 if block == "transformer" else 1)
    assert all(layer.style == "deepnorm" and layer.alpha == a for layer in model.layers)
    assert model.beta == b
    assert isinstance(model.final_norm, nn.Identity)  # Post-LN stack: no final norm
