"""BackboneConfig and Backbone: embedding → norm → residual sub-layers → final norm → LM head.

One typed config drives every option of the seed posts; DeepNorm's α/β are derived from `n_layers` and the
block type (a GAU layer is half a Transformer block), never typed by hand.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from kslm.nn.attention import build_attention_mask, positions_from_mask
from kslm.nn.embedding import LMHead, embedding_std
from kslm.nn.gau import gau_sublayers
from kslm.nn.norm import build_norm
from kslm.nn.residual import Residual, deepnorm_constants
from kslm.nn.rnn_block import rnn_sublayers
from kslm.nn.rope import RotaryEmbedding
from kslm.nn.transformer import transformer_sublayers

MIN_VOCAB = 6  # kslm's five special tokens (kslm.data.tokenizer.SPECIAL_TOKENS) and at least one more


@dataclass
class BackboneConfig:
    """Shape and technique choices of a kslm language-model backbone.

    Args:
        block: transformer (attention + FFN blocks), gau (Gated Attention Units, FLASH) or rnn (parallel
            non-linear RNN + FFN blocks; causal, or bidirectional as forward + backward RNNs; no prefix mask).
        vocab_size: vocabulary size; left empty it is taken from the tokenizer.
        d_model: hidden size d.
        n_layers: Transformer or RNN blocks, or GAU layers (two GAU layers ≈ one Transformer block).
        n_heads: attention heads (transformer only).
        d_ff: FFN inner size (transformer and rnn blocks; default 4·d).
        expansion: GAU expansion e/d (e = 2d in the paper).
        qk_dim: GAU shared Q/K size s (128 in the paper).
        norm: pre (Pre-LN), post (Post-LN) or deepnorm (Post-LN with α skip scale and β init).
        norm_type: layernorm or rmsnorm.
        attention: softmax, softmax_plus (log-n entropy-invariant scale) or relu2 (relu²/n).
        train_length: n₀ of the softmax_plus scale log(n)/log(n₀); 512 as in GAU-α.
        mask: causal (GPT), bidirectional (MLM) or prefix (UniLM prefix LM).
        position: rope or none.
        activation: FFN / GAU activation: gelu, silu, relu or squareplus.
        squareplus_b: b of SquarePlus (x + √(x² + b))/2: 4 (the paper's), 1.52382103 (Su's minimax fit to SoftPlus)
            or ≥ 1.9218 (never below SoftPlus); 0 is ReLU.
        tie_embeddings: share the input embedding with the output layer.
        tied_init: remedy for tied embeddings: rescaled (σ = ln V/d), swap, ortho or none.
        max_length: longest sequence the model accepts.
        dropout: dropout on residual branches and attention weights.
        rnn_cell: rnn block cell: tanh (x_t = tanh(λ⊙x_{t−1} + u_t)) or gru (diagonal GRU).
        rnn_method: rnn block iteration: newton (DEER, diagonal Jacobian) or fixed (Su's cheap fixed-λ form).
        rnn_iterations: rnn block: empty = solve to tolerance (implicit gradient); k = exactly k iterations
            (autograd through them: Su's "iterations as layers").
    """

    block: Literal["transformer", "gau", "rnn"] = "transformer"
    vocab_size: Optional[int] = None
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: Optional[int] = None
    expansion: int = 2
    qk_dim: int = 128
    norm: Literal["pre", "post", "deepnorm"] = "pre"
    norm_type: Literal["layernorm", "rmsnorm"] = "layernorm"
    attention: Literal["softmax", "softmax_plus", "relu2"] = "softmax"
    train_length: int = 512
    mask: Literal["causal", "bidirectional", "prefix"] = "causal"
    position: Literal["rope", "none"] = "rope"
    activation: Literal["gelu", "silu", "relu", "squareplus"] = "gelu"
    squareplus_b: float = 4.0
    tie_embeddings: bool = True
    tied_init: Literal["rescaled", "swap", "ortho", "none"] = "none"
    max_length: int = 2048
    dropout: float = 0.0
    rnn_cell: Literal["tanh", "gru"] = "tanh"
    rnn_method: Literal["newton", "fixed"] = "newton"
    rnn_iterations: Optional[int] = None

    def __post_init__(self):
        from kslm.errors import ConfigError

        def fail(message):
            raise ConfigError(f"model.backbone.{message}")

        for name in ("d_model", "n_layers", "n_heads", "expansion", "qk_dim", "train_length", "max_length"):
            if getattr(self, name) <= 0:
                fail(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_ff is not None and self.d_ff <= 0:
            fail(f"d_ff must be positive (or empty: 4·d_model), got {self.d_ff}")
        if self.vocab_size is not None and self.vocab_size < MIN_VOCAB:
            fail(f"vocab_size must be at least {MIN_VOCAB} (kslm's 5 special tokens and one more), got {self.vocab_size}")
        if self.block == "transformer" and self.d_model % self.n_heads:
            fail(f"d_model {self.d_model} is not divisible by model.backbone.n_heads {self.n_heads}")
        if self.position == "rope":
            if self.block == "transformer" and (self.d_model // self.n_heads) % 2:
                fail(f"d_model / n_heads = {self.d_model // self.n_heads} is the head size, and RoPE needs an even "
                     "one (or model.backbone.position none)")
            if self.block == "gau" and self.qk_dim % 2:
                fail(f"qk_dim {self.qk_dim}: RoPE needs an even head size (or model.backbone.position none)")
        if self.tied_init == "swap" and self.d_model % 2:
            fail(f"tied_init swap needs an even model.backbone.d_model, got {self.d_model}")
        if not (self.squareplus_b >= 0 and math.isfinite(self.squareplus_b)):
            fail(f"squareplus_b must be a finite number ≥ 0, got {self.squareplus_b}")
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout must be in [0, 1), got {self.dropout}")
        if self.block == "rnn" and self.mask == "prefix":
            fail("block rnn supports mask causal or bidirectional, not prefix (a recurrence cannot see a whole prefix "
                 "and stay causal after it)")
        if self.rnn_iterations is not None and self.rnn_iterations < 1:
            fail(f"rnn_iterations must be ≥ 1 or empty, got {self.rnn_iterations}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def sublayers_per_layer(self) -> int:
        return 1 if self.block == "gau" else 2

    @property
    def deepnorm(self):
        """(α, β) for this stack: the block count is sub-layers / 2 (GAU: n_layers / 2)."""
        arch = "encoder" if self.mask == "bidirectional" else "decoder"
        return deepnorm_constants(self.n_layers * self.sublayers_per_layer / 2, arch)


class Context:
    """Per-forward state shared by the sub-layers: mask, RoPE phases and an optional KV cache."""

    def __init__(self, mask, phases, cache=None, attention_mask=None, kernel="auto"):
        self.mask, self.phases, self.cache = mask, phases, cache
        self.attention_mask = attention_mask  # [B, past + T], 1 = token: the RNN block carries its state over pads
        self.kernel = kernel  # kslm.nn.attention.attend's kernel: auto | dense | linear_memory

    def rotate(self, x):
        return RotaryEmbedding.rotate(x, self.phases)

    def extend_cache(self, module, k, v):
        if self.cache is None:
            return k, v
        if module in self.cache:
            pk, pv = self.cache[module]
            k, v = torch.cat([pk, k], dim=-2), torch.cat([pv, v], dim=-2)
        self.cache[module] = (k, v)
        return k, v


class Backbone(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("BackboneConfig.vocab_size must be set (it comes from the tokenizer)")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_norm = build_norm(cfg.norm_type, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        alpha, self.beta = cfg.deepnorm if cfg.norm == "deepnorm" else (1.0, 1.0)
        make = {"transformer": transformer_sublayers, "gau": gau_sublayers, "rnn": rnn_sublayers}[cfg.block]
        self.layers = nn.ModuleList(
            Residual(sub, cfg.norm, cfg.d_model, cfg.norm_type, alpha, cfg.dropout)
            for _ in range(cfg.n_layers) for sub in make(cfg)
        )
        # Pre-Norm needs a final norm (‖x_L‖ grows); Post/DeepNorm stacks already end normalised
        self.final_norm = build_norm(cfg.norm_type, cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.head = LMHead(cfg.vocab_size, cfg.d_model, cfg.tie_embeddings, cfg.tied_init)
        rope_dim = cfg.d_model // cfg.n_heads if cfg.block == "transformer" else cfg.qk_dim
        self.rope = RotaryEmbedding(rope_dim) if cfg.position == "rope" else None
        # how it runs, not what it computes (set_execution; never part of the config or a checkpoint)
        self.checkpointing, self.attention_kernel = False, "auto"
        self.reset_parameters()

    def set_execution(self, checkpointing: bool = False, attention_kernel: str = "auto", compile=False):
        """Run-time choices that leave the function unchanged (equal outputs, up to fp32 rounding order):
        checkpointing: recompute each residual sub-layer in the backward instead of keeping its activations
            (torch.utils.checkpoint, non-reentrant; the RNG state is replayed, so dropout masks are the same);
        attention_kernel: auto | dense | linear_memory (kslm.nn.attention.attend);
        compile: torch.compile each residual sub-layer in place (Module.compile: parameter names unchanged);
            True for torch.compile's defaults, or a dict of its keyword arguments (e.g. {"backend": "aot_eager"})."""
        from kslm.nn.attention import KERNELS

        if attention_kernel not in KERNELS:
            raise ValueError(f"unknown attention kernel {attention_kernel!r} ({' | '.join(KERNELS)})")
        self.checkpointing, self.attention_kernel = bool(checkpointing), attention_kernel
        if compile:
            options = compile if isinstance(compile, dict) else {}
            for layer in self.layers:
                layer.compile(**options)
        return self

    @torch.no_grad()
    def reset_parameters(self):
        cfg = self.cfg
        nn.init.normal_(self.embed.weight, std=embedding_std(cfg.vocab_size, cfg.d_model, cfg.tie_embeddings, cfg.tied_init))
        for layer in self.layers:
            layer.sublayer.reset_parameters()
            if cfg.norm == "deepnorm":
                for w in layer.sublayer.deepnorm_targets():
                    w.mul_(self.beta)
        self.head.reset_parameters()

    def positions(self, input_ids, attention_mask=None, past_length: int = 0):
        """Absolute positions; with padding they count real tokens only, so left-padded rows start at 0."""
        B, T = input_ids.shape
        if attention_mask is None:
            return torch.arange(past_length, past_length + T, device=input_ids.device)
        return positions_from_mask(attention_mask, T)

    def forward(self, input_ids, attention_mask=None, prefix_lengths=None, position_ids=None, cache=None):
        """input_ids [B, T] → hidden [B, T, d] (after the final norm). attention_mask [B, past + T]: 1 = token.
        `cache` (a dict, filled in place) keeps keys/values for incremental decoding."""
        B, T = input_ids.shape
        past = 0
        if cache:
            past = next(iter(cache.values()))[0].shape[-2]
        if past + T > self.cfg.max_length:
            raise ValueError(f"sequence of {past + T} tokens exceeds max_length {self.cfg.max_length}")
        mask = build_attention_mask(self.cfg.mask, T, input_ids.device, attention_mask, prefix_lengths, past)
        if position_ids is None:
            position_ids = self.positions(input_ids, attention_mask, past)
        phases = self.rope.rotation(position_ids) if self.rope is not None else None
        ctx = Context(mask, phases, cache, attention_mask, self.attention_kernel)
        x = self.dropout(self.embed_norm(self.embed(input_ids)))
        recompute = self.checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, ctx, use_reentrant=False) if recompute else layer(x, ctx)
        return self.final_norm(x)

    def logits(self, hidden):
        return self.head(hidden, self.embed.weight)

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embedding else n

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Analytic matmul FLOPs per token (2 per multiply-add; ×3 for forward + backward when training).
        Attention counts the full T×T score matrix (PaLM convention), so 6N + 12·L·H·Q·T for a Transformer;
        a GAU layer costs 2·(d(2e+s) + ed) for its dense maps plus 2·T·(s + e) for QKᵀ and AV; an RNN block
        2·(d·(n_dir·c·d + d) + d² + 2·d·d_ff) (c = 1 tanh, 3 GRU; the elementwise scan is not counted, like norms)."""
        cfg, d = self.cfg, self.cfg.d_model
        if cfg.block == "transformer":
            d_ff = cfg.d_ff or 4 * d
            per_layer = 2 * (4 * d * d + 2 * d * d_ff) + 2 * seq_len * 2 * d
        elif cfg.block == "rnn":
            width = (2 if cfg.mask == "bidirectional" else 1) * (3 if cfg.rnn_cell == "gru" else 1) * d + d
            per_layer = 2 * (d * width + d * d + 2 * d * (cfg.d_ff or 4 * d))
        else:
            e, s = cfg.expansion * d, cfg.qk_dim
            per_layer = 2 * (d * (2 * e + s) + e * d) + 2 * seq_len * (s + e)
        fwd = cfg.n_layers * per_layer + 2 * d * cfg.vocab_size + (2 * d * d if self.head.ortho is not None else 0)
        return fwd * (3 if training else 1)


__all__ = ["Backbone", "BackboneConfig"]
