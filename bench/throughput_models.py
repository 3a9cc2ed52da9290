"""The models bench/throughput.py compares: their configs at the benchmark's shape, Llama's analytic training FLOPs
(in kslm's Backbone.flops_per_token convention) and their construction. torch, kslm.nn and transformers are imported
when a model is built, not with this module."""


def llama_intermediate(d_ff: int, equal_params: bool) -> int:
    """SwiGLU width: d_ff itself, or 2·d_ff/3 rounded to the nearest multiple of 8 (≈ a 2-matrix FFN's params)."""
    return 8 * round(2 * d_ff / 3 / 8) if equal_params else d_ff


def llama_flops_per_token(d: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int, seq: int,
                          training: bool = True) -> float:
    """Analytic matmul FLOPs per token of LlamaForCausalLM, in Backbone.flops_per_token's convention."""
    head_dim = d // heads
    proj = d * d + 2 * d * kv_heads * head_dim + d * d  # q, k, v, o
    per_layer = 2 * (proj + 3 * d * inter) + 2 * seq * 2 * d  # dense maps + QKᵀ and AV over the full T×T
    fwd = layers * per_layer + 2 * d * vocab
    return fwd * (3 if training else 1)


def kslm_config(args, block: str):
    from kslm.nn import BackboneConfig

    common = {"vocab_size": args.vocab, "d_model": args.d, "norm": "pre", "attention": "softmax", "mask": "causal",
              "position": "rope", "tie_embeddings": True, "tied_init": "none", "max_length": max(args.seq, 2048),
              "dropout": 0.0}
    if block == "transformer":
        return BackboneConfig(block="transformer", n_layers=args.layers, n_heads=args.heads, d_ff=args.d_ff,
                              activation="gelu", **common)
    common["attention"] = args.gau_attention
    return BackboneConfig(block="gau", n_layers=2 * args.layers, n_heads=args.heads, expansion=2, qk_dim=128,
                          activation="silu", **common)


def llama_config(args, equal_params: bool):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=args.vocab, hidden_size=args.d, num_hidden_layers=args.layers,
                       num_attention_heads=args.heads, num_key_value_heads=args.heads,
                       intermediate_size=llama_intermediate(args.d_ff, equal_params),
                       max_position_embeddings=max(args.seq, 2048), tie_word_embeddings=True,
                       attn_implementation="sdpa", use_cache=False)


def build(name: str, args):
    """→ (module, forward(input_ids) → logits, training FLOPs per token, embedding parameters, description)."""
    if name.startswith("kslm-"):
        from kslm.nn import Backbone

        cfg = kslm_config(args, name.removeprefix("kslm-"))
        model = Backbone(cfg)
        desc = {"block": cfg.block, "n_layers": cfg.n_layers, "activation": cfg.activation,
                "attention": cfg.attention, "norm": f"{cfg.norm}/{cfg.norm_type}"}
        if cfg.block == "transformer":
            desc["ffn"] = f"{cfg.d_model}→{cfg.d_ff}→{cfg.d_model} (2 matrices)"
        else:
            desc["ffn"] = f"GAU e={cfg.expansion * cfg.d_model}, s={cfg.qk_dim}"
        n_embed = model.embed.weight.numel()
        return model, lambda x: model.logits(model(x)), model.flops_per_token(args.seq), n_embed, desc
    cfg = llama_config(args, equal_params=name == "llama-equal-params")
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(cfg)
    desc = {"block": "llama", "n_layers": cfg.num_hidden_layers, "activation": cfg.hidden_act,
            "attention": "softmax (sdpa)", "norm": "pre/rmsnorm", "intermediate_size": cfg.intermediate_size,
            "ffn": f"SwiGLU {cfg.hidden_size}→{cfg.intermediate_size}→{cfg.hidden_size} (3 matrices)"}
    flops = llama_flops_per_token(cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
                                  cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size, args.seq)
    n_embed = model.model.embed_tokens.weight.numel()
    return model, lambda x: model(input_ids=x, use_cache=False).logits, flops, n_embed, desc


__all__ = ["llama_intermediate", "llama_flops_per_token", "kslm_config", "llama_config", "build"]
