"""One decode path per extraction task: a head's logits over a record batch of windows (as the NER / RE data modules
collate them: <s> window </s>, `offsets`, `record`, `text`) → per record, the canonical entities / triples with
character offsets. EntityExtraction and RelationExtraction decode with these, and so do the exported head classes
(kslm.hf.modeling_kslm.KslmForExtraction), so an export predicts what `kslm predict` does.
"""

from typing import List, Sequence, Tuple

import torch

from kslm.data.spans import merge_window_triples, merge_windows
from kslm.heads.gplinker import decode_triples


def windows_of_records(batch) -> List[List[int]]:
    """The window indices of each record of a record batch (batch["record"][w] is window w's record)."""
    out = [[] for _ in batch["text"]]
    for w, r in enumerate(batch["record"]):
        out[r].append(w)
    return out


def entity_records(logits: torch.Tensor, batch, types: Sequence[str], threshold: float = 0.0) -> List[List[dict]]:
    """GlobalPointer logits [W, types, L, L] → per record, sorted unique char entities {start, end (exclusive), type}:
    spans with logit > threshold, their tokens shifted past <s>, merged over the record's windows."""
    spans = [[] for _ in batch["offsets"]]  # per window: (start, end inclusive, type) over tokens 1..n
    for w, t, i, j in (logits > threshold).nonzero().tolist():  # i ≤ j, inside the text
        spans[w].append((i - 1, j - 1, types[t]))  # the window's offsets start after <s>
    return [merge_windows([batch["offsets"][w] for w in ws], [spans[w] for w in ws]) for ws in windows_of_records(batch)]


def cap_entities(entity_logits: torch.Tensor, max_entities: int, threshold: float = 0.0):
    """Keep at most `max_entities` positive spans per (window, subject|object): the highest-scoring ones; the
    others are set to −inf. → (logits, number of capped rows). A barely trained model scores a large share of all
    L² spans positive, and decoding pairs every subject with every object; the cap bounds that work."""
    flat = entity_logits.flatten(2)  # [B, 2, L·L]
    over = (flat > threshold).sum(-1) > max_entities
    if not over.any():
        return entity_logits, 0
    kth = flat.topk(min(max_entities, flat.shape[-1]), dim=-1).values[..., -1:]
    keep = (flat >= kth) | ~over[..., None]
    return flat.masked_fill(~keep, float("-inf")).view_as(entity_logits), int(over.sum())


def triple_records(logits: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch, predicates: Sequence[str],
                   threshold: float = 0.0, max_entities: int = 32) -> Tuple[List[List[dict]], int]:
    """GPLinker logits (entity, head, tail) → (per record, sorted unique canonical triples with char spans; the
    number of windows whose subjects or objects were capped at `max_entities`)."""
    entity, head, tail = logits
    entity, capped = cap_entities(entity, max_entities, threshold)
    per_window = [[(sh - 1, st - 1, predicates[p], oh - 1, ot - 1) for sh, st, p, oh, ot in triples]  # <s> off
                  for triples in decode_triples(entity, head, tail, threshold, mask=batch["span_mask"])]
    return [merge_window_triples(text, [batch["offsets"][w] for w in ws], [per_window[w] for w in ws])
            for text, ws in zip(batch["text"], windows_of_records(batch), strict=True)], capped


__all__ = ["windows_of_records", "entity_records", "cap_entities", "triple_records"]
