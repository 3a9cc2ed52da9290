"""Hugging Face models around kslm.nn.Backbone, for exports no native architecture matches exactly (GAU, Post-Norm,
DeepNorm, softmax_plus, relu², SquarePlus, prefix masks, the RNN block, swap / ortho tied heads, …).

`kslm export` copies this file and configuration_kslm.py into the export; `config.json`'s `auto_map` points to them,
so `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` (causal and prefix LMs),
`AutoModelForMaskedLM` (bidirectional) and `AutoModel` (the encoder: hidden states) build the model from the stored
BackboneConfig with kslm's own modules — kslm must be installed. Weights are `backbone.*`, kslm's names.

Generation: greedy / sampled `generate` works with or without a cache. The cache is kslm's (KslmCache: the Backbone's
per-sub-layer keys/values, or RNN states). Positions count real tokens (attention_mask.cumsum − 1), as kslm does, so
left-padded rows are numbered as if alone. A prefix LM (UniLM mask, kexue.fm/archives/9529) needs its prefix length:
pass `prefix_lengths` (a LongTensor [B]: the prefix's columns, padding included) to forward or generate; without it,
the input of the first call that fills a cache is the prefix (the prompt, as `kslm predict` uses it).
"""

import torch
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, MaskedLMOutput

from kslm.nn import Backbone, BackboneConfig
from kslm.nn.rope import RotaryEmbedding

from .configuration_kslm import KslmConfig  # in an export: the configuration file beside this one


class KslmCache:
    """kslm's KV cache for generate: `layers` is the dict Backbone fills in place; `prefix` the prefix lengths."""

    is_linear = [False]
    is_compileable = False  # (generate reads these of a cache it is given back, to continue a generation)

    def __init__(self):
        self.layers, self.prefix = {}, None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return next(iter(self.layers.values()))[0].shape[-2] if self.layers else 0


class KslmPreTrainedModel(PreTrainedModel):
    config_class = KslmConfig
    base_model_prefix = "kslm"
    main_input_name = "input_ids"
    _supports_cache_class = False

    def __init__(self, config, *args, **kwargs):  # (extra kwargs such as add_pooling_layer are not used)
        super().__init__(config)
        self.backbone = Backbone(BackboneConfig.from_dict(config.backbone))
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # kslm keeps its own cache (KslmCache), created by forward

    @torch.no_grad()
    def _init_weights(self, module):
        """Weights come from the export (kslm's Backbone initialises itself when built directly). RoPE's θ table is a
        buffer, not a weight: a build on the meta device leaves it empty, so it is recomputed here."""
        if isinstance(module, RotaryEmbedding):
            module.inv_freq.copy_(module._inv_freq(module.inv_freq.device, module.inv_freq.dtype))

    def get_input_embeddings(self):
        return self.backbone.embed

    def _hidden(self, input_ids, attention_mask=None, position_ids=None, prefix_lengths=None, cache=None):
        cfg = self.backbone.cfg
        if cfg.mask == "prefix" and prefix_lengths is None:
            if cache is not None and cache.prefix is not None:
                prefix_lengths = cache.prefix
            elif cache is not None and not cache.layers:
                prefix_lengths = torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device)
            else:
                raise ValueError("a prefix-LM kslm model needs prefix_lengths (LongTensor [B]) without a cache")
        if cache is not None:
            cache.prefix = prefix_lengths
        return self.backbone(input_ids, attention_mask=attention_mask, prefix_lengths=prefix_lengths,
                             position_ids=position_ids, cache=None if cache is None else cache.layers)


class KslmModel(KslmPreTrainedModel):
    """The backbone's final hidden states (AutoModel): what kslm's extraction heads read."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, prefix_lengths=None, return_dict=True, **kwargs):
        return BaseModelOutput(last_hidden_state=self._hidden(input_ids, attention_mask, position_ids, prefix_lengths))


class KslmForCausalLM(KslmPreTrainedModel, GenerationMixin):
    """Causal and prefix kslm LMs (AutoModelForCausalLM)."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, prefix_lengths=None, cache=None,
                use_cache=None, labels=None, logits_to_keep=0, return_dict=True, **kwargs):
        if cache is not None and not isinstance(cache, KslmCache):
            if cache.get_seq_length() > 0:
                raise ValueError("kslm models keep their own cache (KslmCache); got a filled " + type(cache).__name__)
            cache = None
        if cache is None and use_cache:  # generate asks for it (generation_config.json: use_cache true)
            cache = KslmCache()
        hidden = self._hidden(input_ids, attention_mask, position_ids, prefix_lengths, cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.backbone.logits(hidden)
        loss = None
        if labels is not None:  # next-token cross-entropy over the positions that have a target (−100: none)
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)


class KslmForMaskedLM(KslmPreTrainedModel):
    """Bidirectional (masked-LM) kslm models (AutoModelForMaskedLM)."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, return_dict=True, **kwargs):
        logits = self.backbone.logits(self._hidden(input_ids, attention_mask, position_ids))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)


def register() -> None:
    """Make transformers' Auto classes build kslm exports with this (installed) code, without trust_remote_code."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    try:
        AutoConfig.register("kslm", KslmConfig)
    except ValueError:  # already registered
        return
    AutoModel.register(KslmConfig, KslmModel)
    AutoModelForCausalLM.register(KslmConfig, KslmForCausalLM)
    AutoModelForMaskedLM.register(KslmConfig, KslmForMaskedLM)


__all__ = ["KslmConfig", "KslmCache", "KslmModel", "KslmForCausalLM", "KslmForMaskedLM", "register"]
