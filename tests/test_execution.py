"""How a task runs, not what it computes: --model.compile, --model.checkpointing, --model.attention_kernel (kept out
of checkpoints), bf16-true, the fused-AdamW choice, and fp32 arithmetic where kslm.precision wants it under bf16. Equal numbers to the plain path, on CPU.

Cost: three 2-step CLI fits of tiny_args' model (one plain, one with every option, one bf16-true), a 2-step
Backbone loop under torch.compile's aot_eager backend; the inductor fit is marked slow (≈ 2 min of C++ compiling)."""

from types import SimpleNamespace

import pytest
import torch
from helpers import run_cli, scalars, tiny_args, tiny_backbone
from torch.nn import functional as F

from kslm.checkpoint import payload_of
from kslm.nn.attention import attend, build_attention_mask
from kslm.nn.norm import build_norm
from kslm.optim.optimizers import adamw_implementation

pytestmark = pytest.mark.usefixtures("single_thread")
GAU = ["--model.backbone.block", "gau", "--model.backbone.attention", "softmax_plus", "--trainer.log_every_n_steps", "1"]


def fit(corpus, folder, *extra, capsys=None):
    """A 2-step GAU fit in `folder` (its working directory) → (last train/loss, final state dict, checkpoint)."""
    import os

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code, err = run_cli(["fit", *tiny_args(corpus, folder, *GAU, *extra, steps=2)], capsys)
    finally:
        os.chdir(cwd)
    assert code == 0, err
    ckpt = torch.load(folder / "ckpt" / "last.ckpt", weights_only=True)
    return scalars(folder / "logs")["train/loss"], ckpt["state_dict"], ckpt


@pytest.fixture(scope="module")
def plain(small_corpus, tmp_path_factory):
    return fit(small_corpus, tmp_path_factory.mktemp("plain"))


def test_compile_and_checkpointing_give_the_same_training(plain, small_corpus, tmp_path, monkeypatch):
    """--model.compile true and --model.checkpointing true together: every residual sub-layer compiled (in place:
    parameter names unchanged) and recomputed in the backward; the same loss and weights after 2 AdamW steps. The
    compile uses torch.compile's aot_eager backend here (graph capture and AOT autograd, no C++ build): the inductor
    run is test_compile_with_inductor below."""
    compiled = []
    original = torch.nn.Module.compile

    def aot_eager(module, **kwargs):
        compiled.append(type(module).__name__)
        return original(module, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", aot_eager)
    loss, state, ckpt = fit(small_corpus, tmp_path, "--model.compile", "true", "--model.checkpointing", "true")
    assert compiled == ["Residual", "Residual"]  # tiny_args: 2 GAU layers
    assert loss == pytest.approx(plain[0], rel=1e-6)
    assert state.keys() == plain[1].keys()
    for k, v in state.items():
        torch.testing.assert_close(v, plain[1][k], rtol=1e-5, atol=1e-6)
    # run-time options stay out of the checkpoint: a later `kslm predict` or resume follows its own command line
    settings = payload_of(ckpt).settings
    assert "backbone" in settings and not {"compile", "checkpointing", "attention_kernel"} & set(settings)


@pytest.mark.slow
def test_compile_with_inductor(plain, small_corpus, tmp_path):
    """The real thing (inductor, C++ kernels on CPU): the same loss and weights as the eager run."""
    loss, state, _ = fit(small_corpus, tmp_path, "--model.compile", "true")
    assert loss == pytest.approx(plain[0], rel=1e-5)
    for k, v in state.items():
        torch.testing.assert_close(v, plain[1][k], rtol=1e-4, atol=1e-5)


def test_bf16_true_trains_in_bf16(plain, small_corpus, tmp_path):
    """--trainer.precision bf16-true: weights (and so the checkpoint) in bf16, a finite loss within bf16 rounding of
    the fp32 run's; the loss itself is computed in fp32 (kslm.tasks.lm casts the logits)."""
    loss, state, _ = fit(small_corpus, tmp_path, "--trainer.precision", "bf16-true")
    assert {v.dtype for v in state.values()} == {torch.bfloat16}
    assert loss == pytest.approx(plain[0], rel=2e-2) and loss != plain[0]


def test_unknown_attention_kernel_is_one_line(small_corpus, workdir, capsys):
    code, err = run_cli(["fit", *tiny_args(small_corpus, workdir, "--model.attention_kernel", "flash")], capsys)
    assert code == 2 and "attention_kernel" in err and "Traceback" not in err


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_checkpointing_recomputes_with_equal_gradients(block):
    """Train mode with dropout 0.3: with checkpointing each sub-layer runs twice (forward, then again in the
    backward) and the gradients are bit-identical (the RNG state is replayed, so the dropout masks are the same)."""
    model = tiny_backbone(block, double=False, train=True, dropout=0.3)
    x = torch.randint(40, (2, 11), generator=torch.Generator().manual_seed(0))
    calls = []
    for layer in model.layers:
        layer.sublayer.register_forward_hook(lambda *a: calls.append(1))

    def grads(checkpointing):
        model.set_execution(checkpointing=checkpointing)
        model.zero_grad()
        calls.clear()
        torch.manual_seed(7)
        F.cross_entropy(model.logits(model(x[:, :-1])).flatten(0, 1), x[:, 1:].flatten()).backward()
        return [p.grad.clone() for p in model.parameters()], len(calls)

    (plain, n_plain), (ckpt, n_ckpt) = grads(False), grads(True)
    assert n_ckpt == 2 * n_plain == 2 * len(model.layers)
    assert all(torch.equal(a, b) for a, b in zip(plain, ckpt, strict=True))


def test_compiled_backbone_trains_the_same():
    """2 AdamW steps of a GAU (complex RoPE, softmax_plus) Backbone with every layer compiled (aot_eager) give the
    eager losses."""
    def losses(compile):
        model = tiny_backbone("gau", double=False, train=True, attention="softmax_plus", norm="post",
                              norm_type="rmsnorm").set_execution(compile=compile)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        x = torch.randint(40, (2, 17), generator=torch.Generator().manual_seed(1))
        out = []
        for _ in range(2):
            loss = F.cross_entropy(model.logits(model(x[:, :-1])).flatten(0, 1), x[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
            out.append(loss.item())
        return out

    assert losses({"backend": "aot_eager"}) == pytest.approx(losses(False), rel=1e-6)


def fake_module(*devices, floating=True):
    params = [SimpleNamespace(requires_grad=True, is_cuda=d == "cuda", is_floating_point=lambda: floating) for d in devices]
    return SimpleNamespace(parameters=lambda: iter(params))


def test_fused_adamw_only_where_every_parameter_is_on_cuda():
    assert adamw_implementation(fake_module("cuda", "cuda")) == {"fused": True}
    assert adamw_implementation(fake_module("cuda", "cpu")) == {}
    assert adamw_implementation(fake_module("cpu")) == {}  # CPU keeps torch's default: earlier runs bit for bit
    assert adamw_implementation(torch.nn.Linear(2, 2)) == {}


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_bf16_norms_compute_in_fp32(kind):
    """kslm.precision's rule for norms holds under bf16-true without kslm code: torch's norms cast to bf16 give the
    fp32 norm of the same bf16 input and gain, rounded once (a bf16 gain multiply would round twice: ≤ 2 ulp off)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 384, generator=g) * 3 + 1).bfloat16()
    norm = build_norm(kind, 384)
    with torch.no_grad():
        norm.weight.copy_((torch.rand(384, generator=g) + 0.5).bfloat16())
    reference = norm(x.float()).bfloat16()
    assert (norm.bfloat16()(x) == reference).float().mean() > 0.999  # fp32 summation order may flip a rare tie


@pytest.mark.parametrize("kernel", ["dense", "linear_memory"])
def test_bf16_attention_softmax_in_fp32(kernel):
    """GAU-shaped (q/k 32, values 96) softmax attention on bf16 q/k/v, as under bf16-true: as close to the fp32
    computation on the same inputs as that result's own rounding to bf16 (≤ 1.5×); a bf16 softmax is 2.6× off."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 1, 300, 32, generator=g).bfloat16() for _ in range(2))
    v = torch.randn(2, 1, 300, 96, generator=g).bfloat16()
    mask = build_attention_mask("causal", 300)
    exact = attend(q.float(), k.float(), v.float(), mask, "softmax", 128, 0.0, "dense")
    got = attend(q, k, v, mask, "softmax", 128, 0.0, kernel).float()
    rounding = (exact.bfloat16().float() - exact).norm()
    assert (got - exact).norm() <= 1.5 * rounding
