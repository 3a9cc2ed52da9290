"""Hugging Face models around kslm.nn.Backbone, for exports no native architecture matches exactly (GAU, Post-Norm,
DeepNorm, softmax_plus, relu², SquarePlus, prefix masks, the RNN block, swap / ortho tied heads, …).

`kslm export` copies this file and configuration_kslm.py into the export; `config.json`'s `auto_map` points to them,
so `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` (causal and prefix LMs),
`AutoModelForMaskedLM` (bidirectional) and `AutoModel` (the encoder: hidden states) build the model from the stored
BackboneConfig with kslm's own modules — kslm must be installed. Weights are `backbone.*` (and an NER / RE head's
`head_module.*`), kslm's names.

NER / RE exports: `AutoModelForTokenClassification` builds the encoder with its head (KslmForExtraction) —
GlobalPointer / Efficient GlobalPointer (kexue.fm/archives/8373, 8877) or GPLinker (archives/8888). `forward` gives
the head's logits and the token spans / triples scored > 0 in each row (a row being one window `<s> text </s>`, as
the export's tokenizer encodes a text); `extract(texts, tokenizer)` gives the records `kslm predict` writes
(character offsets, long texts in kslm's sliding windows), decoded by kslm.data.decode as kslm decodes them.

Generation: greedy / sampled `generate` works with or without a cache. The cache is kslm's (KslmCache: the Backbone's
per-sub-layer keys/values, or RNN states). Positions count real tokens (attention_mask.cumsum − 1), as kslm does, so
left-padded rows are numbered as if alone. A prefix LM (UniLM mask, kexue.fm/archives/9529) needs its prefix length:
pass `prefix_lengths` (a LongTensor [B]: the prefix's columns, padding included) to forward or generate; without it,
the input of the first call that fills a cache is the prefix (the prompt, as `kslm predict` uses it).
"""

from dataclasses import dataclass
from typing import Any, List, Optional

import torch
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, MaskedLMOutput, ModelOutput

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
        self._build_head()
        self.post_init()

    def _build_head(self) -> None:
        """An NER / RE head beside the backbone (the head classes); nothing for the others."""

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

    _keys_to_ignore_on_load_unexpected = [r"^head_module\."]  # an NER / RE export's head: not the encoder's

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


@dataclass
class TokenSpansOutput(ModelOutput):
    """logits [B, types, L, L] (−inf outside the valid spans); spans: per row, (start, end inclusive, type) token
    spans with logit > 0."""

    logits: Optional[torch.Tensor] = None
    spans: Optional[List[List[tuple]]] = None


@dataclass
class RelationTriplesOutput(ModelOutput):
    """GPLinker's entity [B, 2, L, L], head and tail [B, P, L, L] logits; triples: per row, (subject start, subject
    end, predicate, object start, object end) token triples (ends inclusive) scored > 0 in all four cells."""

    entity_logits: Optional[torch.Tensor] = None
    head_logits: Optional[torch.Tensor] = None
    tail_logits: Optional[torch.Tensor] = None
    triples: Optional[List[List[tuple]]] = None


def default_span_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The tokens that may start or end a span in `<s> text </s>` rows: the real ones but <s> and </s>."""
    span = attention_mask.clone()
    span[:, 0] = 0
    span[torch.arange(span.shape[0], device=span.device), attention_mask.sum(1).clamp(min=1) - 1] = 0
    return span


class KslmForExtraction(KslmPreTrainedModel):
    """An NER or RE export (AutoModelForTokenClassification): the backbone with the task's head — EntityExtraction's
    GlobalPointer / Efficient GlobalPointer (kexue.fm/archives/8373, 8877) or RelationExtraction's GPLinker
    (archives/8888), as config.kslm_task says. One class for both tasks: transformers maps an Auto class to one model
    class per config class, so two head classes over KslmConfig would let the first export loaded in a process decide
    the class of the next.

    forward(input_ids, attention_mask, span_mask=None): rows are windows `<s> text </s>` (what the export's tokenizer
    gives for a text); span_mask, the tokens that may start or end a span, defaults to the real ones but <s> and </s>.
    NER → TokenSpansOutput, RE → RelationTriplesOutput. `extract(texts, tokenizer)` → `kslm predict`'s records."""

    TASKS = ("EntityExtraction", "RelationExtraction")

    @property
    def ner(self) -> bool:
        return self.config.kslm_task == "EntityExtraction"

    def _build_head(self) -> None:
        from kslm.heads.global_pointer import EfficientGlobalPointer, GlobalPointer
        from kslm.heads.gplinker import GPLinker

        if self.config.kslm_task not in self.TASKS:
            raise ValueError(f"config.kslm_task must be one of {', '.join(self.TASKS)}, got {self.config.kslm_task!r}")
        head, n = dict(self.config.kslm_head or {}), len(self.config.kslm_labels)
        if self.ner:
            cls = GlobalPointer if head.get("head") == "gp" else EfficientGlobalPointer
            self.head_module = cls(self.backbone.cfg.d_model, n, head["head_size"])
        else:
            self.head_module = GPLinker(self.backbone.cfg.d_model, n, head["head_size"])

    def forward(self, input_ids, attention_mask=None, span_mask=None, position_ids=None, return_dict=True, **kwargs):
        from kslm.data.decode import cap_entities
        from kslm.heads.gplinker import decode_triples

        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        span_mask = default_span_mask(attention_mask) if span_mask is None else span_mask
        logits = self.head_module(self._hidden(input_ids, attention_mask, position_ids), span_mask)
        labels = self.config.kslm_labels
        if self.ner:
            spans = [[] for _ in range(logits.shape[0])]
            for b, t, i, j in (logits > 0).nonzero().tolist():
                spans[b].append((i, j, labels[t]))
            return TokenSpansOutput(logits=logits, spans=spans)
        entity, head, tail = logits
        capped, _ = cap_entities(entity, self.config.kslm_max_entities or 32)
        triples = [sorted((sh, st, labels[p], oh, ot) for sh, st, p, oh, ot in found)
                   for found in decode_triples(capped, head, tail, 0.0, mask=span_mask)]
        return RelationTriplesOutput(entity_logits=entity, head_logits=head, tail_logits=tail, triples=triples)

    def _decode(self, batch) -> List[dict]:
        from kslm.data.decode import entity_records, triple_records

        out = self(batch["input_ids"], batch["attention_mask"], batch["span_mask"])
        labels = self.config.kslm_labels
        if self.ner:
            return [{"entities": [{**e, "text": text[e["start"]:e["end"]]} for e in ents]}
                    for text, ents in zip(batch["text"], entity_records(out.logits, batch, labels), strict=True)]
        records, _ = triple_records((out.entity_logits, out.head_logits, out.tail_logits), batch, labels, 0.0,
                                    self.config.kslm_max_entities or 32)
        return [{"triples": triples} for triples in records]

    @torch.no_grad()
    def extract(self, texts: List[str], tokenizer: Any, batch_size: Optional[int] = None) -> List[dict]:
        """`kslm predict`'s records for `texts` ({"text", "entities" | "triples"}, character offsets into each text):
        kslm's own windows (the run's max_length and stride), batches and decoding (kslm.data). tokenizer: the
        export's (AutoTokenizer.from_pretrained(DIR)) or a tokenizers.Tokenizer."""
        from kslm.data.ner import NERDataModule
        from kslm.data.re import REDataModule

        windows = dict(self.config.kslm_windows or {})
        size = batch_size or windows.pop("batch_size", None) or 16
        windows.pop("batch_size", None)
        data = (NERDataModule if self.ner else REDataModule)(**windows, batch_size=size)
        data.connect(getattr(tokenizer, "backend_tokenizer", tokenizer), list(self.config.kslm_labels))
        records = [{"text": t, "line": i + 1} for i, t in enumerate(texts)]
        data.check_sizes(records, "<texts>")
        items = data.encode(records, "<texts>", labelled=False)
        out = []
        for start in range(0, len(items), size):
            batch = data.collate_records(items[start:start + size], labels=False)
            out += [{"text": text, **found} for text, found in zip(batch["text"], self._decode(batch), strict=True)]
        return out


def register() -> None:
    """Make transformers' Auto classes build kslm exports with this (installed) code, without trust_remote_code."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForTokenClassification

    try:
        AutoConfig.register("kslm", KslmConfig)
    except ValueError:  # already registered
        return
    AutoModel.register(KslmConfig, KslmModel)
    AutoModelForCausalLM.register(KslmConfig, KslmForCausalLM)
    AutoModelForMaskedLM.register(KslmConfig, KslmForMaskedLM)
    AutoModelForTokenClassification.register(KslmConfig, KslmForExtraction)


__all__ = ["KslmConfig", "KslmCache", "KslmModel", "KslmForCausalLM", "KslmForMaskedLM", "KslmForExtraction",
           "register"]
