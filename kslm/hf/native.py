"""kslm backbones that are exactly an existing Hugging Face architecture, exported to it (no remote code).

A Pre-Norm RMSNorm softmax RoPE Transformer with kslm's plain FFN (fc2(φ(fc1 x)), no gate, no biases) is
`ArceeForCausalLM` (Llama's attention and norms with a non-gated MLP) once three things are mapped:
    - kslm's fused qkv [3d, d] → q/k/v_proj, each head's rows permuted from RoPE's interleaved pairs (2i, 2i+1)
      (kslm, RoFormer layout; kexue.fm/archives/8265) to Llama's halves (i, i + h/2): q·k is unchanged by a common
      permutation, and the rotations then agree;
    - kslm's norm right after the embedding is a function of the token id alone, so it is folded into the input
      table: embed_tokens = Norm(E); lm_head = E (tied) or kslm's output matrix;
    - the swap tying of kexue.fm/archives/9698 (the final feature's halves swapped before the tied matmul:
      swap(h)·Eᵀ = h·E[:, π⁻¹]ᵀ, π the swap) is lm_head = E with its columns permuted — exact, and undone exactly;
    - eps, θ = 10000, head size and the activation (gelu, silu, relu: the same functions in torch and HF's ACT2FN).
The candidate is chosen by the config, and kept only if the converted model's logits match kslm's (`verify`, fp32,
≤ 1e-5 on a padded probe batch); otherwise the export falls back to remote code. What the fold loses (E when untied,
the embedding norm's gain) is stored beside the weights (`kslm_embedding.safetensors`) so that `--model.pretrained DIR`
gets kslm's exact tensors back.
"""

from typing import Dict, Optional, Tuple

import torch

from kslm.nn import Backbone, BackboneConfig

TOLERANCE = 1e-5
ARCEE_ACTIVATIONS = {"gelu": "gelu", "silu": "silu", "relu": "relu"}


def candidate(cfg: BackboneConfig) -> Optional[str]:
    """The native architecture this config should be, or None (remote code)."""
    if (cfg.block == "transformer" and cfg.norm == "pre" and cfg.norm_type == "rmsnorm" and cfg.attention == "softmax"
            and cfg.position == "rope" and cfg.mask == "causal" and cfg.activation in ARCEE_ACTIVATIONS
            and (not cfg.tie_embeddings or cfg.tied_init in ("none", "rescaled", "swap"))):
        return "ArceeForCausalLM"
    return None


def _halves(head_dim: int) -> torch.Tensor:
    """Row order that takes interleaved RoPE pairs to rotate-half layout: [0, 2, 4, …, 1, 3, 5, …]."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _swap_order(cfg: BackboneConfig) -> Optional[torch.Tensor]:
    """π of the swap tying (LMHead.transform: t = h[π]), or None when the head multiplies h itself."""
    if not (cfg.tie_embeddings and cfg.tied_init == "swap"):
        return None
    half = cfg.d_model // 2
    return torch.cat([torch.arange(half, cfg.d_model), torch.arange(0, half)])


def _permute(w: torch.Tensor, n_heads: int, inverse: bool = False) -> torch.Tensor:
    d_out, d_in = w.shape
    hd = d_out // n_heads
    order = _halves(hd)
    if inverse:
        order = torch.argsort(order)
    return w.view(n_heads, hd, d_in)[:, order].reshape(d_out, d_in).contiguous()


def arcee_config(cfg: BackboneConfig, **special):
    from transformers import ArceeConfig

    special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **special}
    return ArceeConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff or 4 * cfg.d_model,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
                       head_dim=cfg.d_model // cfg.n_heads, hidden_act=ARCEE_ACTIVATIONS[cfg.activation],
                       max_position_embeddings=cfg.max_length, rms_norm_eps=1e-6, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attention_bias=False,
                       mlp_bias=False, attention_dropout=0.0, architectures=["ArceeForCausalLM"], **special)


@torch.no_grad()
def to_arcee(cfg: BackboneConfig, state: Dict[str, torch.Tensor]) -> Tuple[dict, dict]:
    """kslm backbone state → (ArceeForCausalLM state, the extra tensors the fold loses)."""
    backbone = Backbone(cfg).float().eval()
    backbone.load_state_dict(state)
    d, H = cfg.d_model, cfg.n_heads
    out = {"model.embed_tokens.weight": backbone.embed_norm(backbone.embed.weight.float()),
           "model.norm.weight": state["final_norm.weight"],
           "lm_head.weight": state["embed.weight"] if cfg.tie_embeddings else state["head.proj.weight"]}
    swap = _swap_order(cfg)
    if swap is not None:  # t·Eᵀ with t = h[π] is h·Wᵀ with W[:, π] = E
        out["lm_head.weight"] = state["embed.weight"][:, torch.argsort(swap)]
    for i in range(cfg.n_layers):
        a, f, p = f"layers.{2 * i}.", f"layers.{2 * i + 1}.", f"model.layers.{i}."
        q, k, v = state[a + "sublayer.qkv.weight"].split(d)
        out.update({p + "input_layernorm.weight": state[a + "norm.weight"],
                    p + "self_attn.q_proj.weight": _permute(q, H), p + "self_attn.k_proj.weight": _permute(k, H),
                    p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": state[a + "sublayer.o_proj.weight"],
                    p + "post_attention_layernorm.weight": state[f + "norm.weight"],
                    p + "mlp.up_proj.weight": state[f + "sublayer.fc1.weight"],
                    p + "mlp.down_proj.weight": state[f + "sublayer.fc2.weight"]})
    extra = {"embed_norm.weight": state["embed_norm.weight"]}
    if not cfg.tie_embeddings:
        extra["embed.weight"] = state["embed.weight"]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}, {k: v.contiguous().clone() for k, v in extra.items()}


def from_arcee(cfg: BackboneConfig, hf: Dict[str, torch.Tensor], extra: Dict[str, torch.Tensor]) -> dict:
    """The inverse of to_arcee: kslm's backbone state, exactly."""
    H = cfg.n_heads
    swap = _swap_order(cfg)
    tied = hf["lm_head.weight"] if swap is None else hf["lm_head.weight"][:, swap]
    state = {"embed.weight": extra["embed.weight"] if "embed.weight" in extra else tied,
             "embed_norm.weight": extra["embed_norm.weight"], "final_norm.weight": hf["model.norm.weight"]}
    if not cfg.tie_embeddings:
        state["head.proj.weight"] = hf["lm_head.weight"]
    for i in range(cfg.n_layers):
        a, f, p = f"layers.{2 * i}.", f"layers.{2 * i + 1}.", f"model.layers.{i}."
        q = _permute(hf[p + "self_attn.q_proj.weight"], H, inverse=True)
        k = _permute(hf[p + "self_attn.k_proj.weight"], H, inverse=True)
        state.update({a + "norm.weight": hf[p + "input_layernorm.weight"],
                      a + "sublayer.qkv.weight": torch.cat([q, k, hf[p + "self_attn.v_proj.weight"]]),
                      a + "sublayer.o_proj.weight": hf[p + "self_attn.o_proj.weight"],
                      f + "norm.weight": hf[p + "post_attention_layernorm.weight"],
                      f + "sublayer.fc1.weight": hf[p + "mlp.up_proj.weight"],
                      f + "sublayer.fc2.weight": hf[p + "mlp.down_proj.weight"]})
    return state


def probe(vocab_size: int, max_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of 3 rows with right padding (ids from their own generator)."""
    T = min(12, max_length)
    ids = torch.randint(0, vocab_size, (3, T), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, T - 3:] = 0
    mask[2, T // 2:] = 0
    return ids, mask


@torch.no_grad()
def max_logit_gap(cfg: BackboneConfig, state: dict, hf_model) -> float:
    """max |logits_HF − logits_kslm| over the real tokens of the probe batch, in fp32."""
    backbone = Backbone(cfg).float().eval()
    backbone.load_state_dict(state)
    ids, mask = probe(cfg.vocab_size, cfg.max_length)
    ours = backbone.logits(backbone(ids, attention_mask=mask))
    theirs = hf_model.float().eval()(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    return float((ours[keep] - theirs[keep]).abs().max())


def build_arcee(cfg: BackboneConfig, hf_state: dict):
    """An ArceeForCausalLM with `hf_state` loaded (strict), for the logits check."""
    from transformers import ArceeForCausalLM

    model = ArceeForCausalLM(arcee_config(cfg))
    model.load_state_dict(hf_state, strict=True)
    return model


__all__ = ["candidate", "to_arcee", "from_arcee", "arcee_config", "build_arcee", "max_logit_gap", "TOLERANCE"]
