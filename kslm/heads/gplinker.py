"""GPLinker: joint entity–relation extraction with (Efficient) GlobalPointer (Su, kexue.fm/archives/8888).

A relation is a quintuple (s_h, s_t, p, o_h, o_t): subject span [s_h, s_t], predicate p, object span [o_h, o_t]
(token positions, inclusive ends). Scoring all quintuples is O(P·L⁴); the post decomposes the score as

    S(s_h, s_t, p, o_h, o_t) = S(s_h, s_t) + S(o_h, o_t) + S(s_h, o_h | p) + S(s_t, o_t | p)

and trains each of the four terms with multilabel "softmax + CE" (gold > 0, everything else < 0), so that
prediction is the intersection of four positive sets (the post's decoding loop):

    subjects = {(h, t) : entity[0, h, t] > 0},   objects = {(h, t) : entity[1, h, t] > 0}
    triples  = {(sh, st, p, oh, ot) : (sh, st) ∈ subjects, (oh, ot) ∈ objects,
                                      head[p, sh, oh] > 0 and tail[p, st, ot] > 0}

The tail term is needed because subjects/objects may be nested: head alignment alone is ambiguous.
Modules (bert4keras `task_relation_extraction_gplinker.py`, bojone/GPLinker): three EfficientGlobalPointers,
head_size 64 — entity (2 types: 0 = subject, 1 = object; RoPE, tril mask), head and tail (P types each;
**no RoPE, no tril mask**: s_h may come after o_h).

Loss (archives/8888): bert4keras' sparse MCCE on the flattened L×L grid. Label pairs (i, j) are flattened to i·n + j with
n = the **padded** length of the batch, taken from the logits inside the loss (batches and DDP ranks pad differently);
every empty label set gets the dummy pair (0, 0) → index 0, the [CLS]–[CLS] cell, dropped by `mask_zero=True`. Per group,
loss = mean over batch of the sum over heads of (pos + neg); the model's loss is the sum of the three groups
(bert4keras compiles the three outputs with the same loss, which Keras sums).

Pure PyTorch; never imports lightning.
"""

from typing import List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from kslm.heads.global_pointer import EfficientGlobalPointer
from kslm.losses import multilabel_categorical_crossentropy, sparse_multilabel_categorical_crossentropy

Triple = Tuple[int, int, int, int, int]  # (s_start, s_end, predicate, o_start, o_end), token positions, inclusive


class GPLinker(nn.Module):
    """Entity EGP (2 types, RoPE, tril) + head EGP and tail EGP (num_predicates types, no RoPE, no tril).

    Parameters: 3·(hidden·2d + 2d) + (2d + 1)·2·(2 + 2·num_predicates) (three EfficientGlobalPointers).
    """

    def __init__(self, hidden_size: int, num_predicates: int, head_size: int = 64):
        super().__init__()
        self.num_predicates = num_predicates
        self.entity = EfficientGlobalPointer(hidden_size, 2, head_size, rope=True, tril_mask=True)
        self.head = EfficientGlobalPointer(hidden_size, num_predicates, head_size, rope=False, tril_mask=False)
        self.tail = EfficientGlobalPointer(hidden_size, num_predicates, head_size, rope=False, tril_mask=False)

    def forward(
        self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden [B, L, D], mask [B, L] → (entity [B, 2, L, L], head [B, P, L, L], tail [B, P, L, L]), fp32."""
        return self.entity(hidden, mask), self.head(hidden, mask), self.tail(hidden, mask)


def gplinker_targets(
    triples: Sequence[Sequence[Sequence[int]]], num_predicates: int, device: Optional[torch.device] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gold triples per sample [(s_start, s_end, predicate, o_start, o_end), ...] → sparse label PAIRS, as in the post:

        entity [B, 2, K, 2] ∋ (s_start, s_end) in row 0, (o_start, o_end) in row 1
        head   [B, P, K, 2] ∋ (s_start, o_start) in row p
        tail   [B, P, K, 2] ∋ (s_end, o_end) in row p

    (long; K = the largest set in the batch, per tensor). Pairs are deduplicated per row; empty rows and padding are
    the dummy (0, 0). The pairs are flattened to i·n + j inside `gplinker_loss`, with n the padded length of the
    logits, so a batch padded differently (or another DDP rank) can never be flattened with the wrong n; use
    `flatten_pairs` for the flat indices. Position 0 must be the [CLS] token: a gold pair (0, 0) would be
    indistinguishable from padding and is rejected.
    """
    groups = ([], [], [])  # per sample: entity rows, head rows, tail rows (lists of sorted pair lists)
    for b, sample in enumerate(triples):
        ent = [set(), set()]
        head = [set() for _ in range(num_predicates)]
        tail = [set() for _ in range(num_predicates)]
        for triple in sample:
            sh, st, p, oh, ot = (int(x) for x in triple)
            if not 0 <= p < num_predicates:
                raise ValueError(f"sample {b}: predicate {p} outside [0, {num_predicates})")
            if min(sh, st, oh, ot) < 0 or sh > st or oh > ot:
                raise ValueError(f"sample {b}: bad spans in {tuple(triple)} (need 0 <= start <= end)")
            ent[0].add((sh, st))
            ent[1].add((oh, ot))
            head[p].add((sh, oh))
            tail[p].add((st, ot))
        for rows in (ent, head, tail):
            if any((0, 0) in row for row in rows):
                raise ValueError(f"sample {b}: a gold pair (0, 0) collides with the padding index; keep [CLS] at 0")
        for g, rows in zip(groups, (ent, head, tail), strict=True):
            g.append([sorted(row) for row in rows])

    def pad(group: List[List[List[Tuple[int, int]]]], heads: int) -> torch.Tensor:
        k = max([1] + [len(row) for rows in group for row in rows])
        out = torch.zeros(len(group), heads, k, 2, dtype=torch.long)
        for b, rows in enumerate(group):
            for h, row in enumerate(rows):
                if row:
                    out[b, h, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(device) if device is not None else out

    return pad(groups[0], 2), pad(groups[1], num_predicates), pad(groups[2], num_predicates)


def flatten_pairs(pairs: torch.Tensor, length: int) -> torch.Tensor:
    """Label pairs [..., K, 2] → flat indices i·length + j, [..., K]; `length` = padded L of the logits."""
    if pairs.numel() and (pairs.min() < 0 or pairs.max() >= length):
        raise ValueError(f"label positions must lie in [0, {length}) (the padded length of the logits)")
    return pairs[..., 0] * length + pairs[..., 1]


def _group_loss(logits: torch.Tensor, pairs: torch.Tensor, sparse: bool = True) -> torch.Tensor:
    """bert4keras `globalpointer_crossentropy` (sparse): logits [B, H, L, L], pairs [B, H, K, 2] → scalar.
    sparse=False: the same loss through the dense MCCE on multi-hot labels [B, H, L·L] (class 0, the padding pair,
    left out as with mask_zero) — the multi-hot version the post compares against (1.5× slower)."""
    b, h, length, _ = logits.shape
    y_true = flatten_pairs(pairs.to(logits.device), length)  # flattened with the padded length, as bert4keras does
    y_pred = logits.reshape(b, h, length * length)
    if sparse:
        loss = sparse_multilabel_categorical_crossentropy(y_true=y_true, y_pred=y_pred, mask_zero=True)  # [B, H]
    else:
        dense = torch.zeros_like(y_pred, dtype=torch.bool).scatter_(-1, y_true, True)
        keep = torch.ones_like(dense)
        keep[..., 0] = False  # class 0 is neither positive nor negative (mask_zero)
        loss = multilabel_categorical_crossentropy(y_true=dense[keep].reshape(b, h, -1),
                                                   y_pred=y_pred[keep].reshape(b, h, -1))
    return loss.sum(dim=1).mean()


def gplinker_loss(
    entity_logits: torch.Tensor,
    head_logits: torch.Tensor,
    tail_logits: torch.Tensor,
    entity_labels: torch.Tensor,
    head_labels: torch.Tensor,
    tail_labels: torch.Tensor,
    sparse: bool = True,
) -> torch.Tensor:
    """Σ over {entity, head, tail} of mean_batch(sum_heads(sparse MCCE)), fp32 scalar (archives/8888, bert4keras).

    Labels are the pair tensors of `gplinker_targets`; sparse=False computes the same value with the dense MCCE."""
    return (
        _group_loss(entity_logits, entity_labels, sparse)
        + _group_loss(head_logits, head_labels, sparse)
        + _group_loss(tail_logits, tail_labels, sparse)
    )


def _decode_pairs_dense(entity_logits, head_logits, tail_logits, threshold, mask, budget):
    """The post's loop as a few batch-wide tensor ops: pair every subject with every object of its sentence, read
    head[p, sh, oh] and tail[p, st, ot] for all p at once. Used when the pairs × P cells fit `budget` (a trained
    model predicts few entities); returns None otherwise."""
    ent = entity_logits > threshold
    if mask is not None:
        valid = mask.to(device=ent.device) != 0
        ent = ent & valid[:, None, :, None] & valid[:, None, None, :]
    spans = ent.nonzero()  # [N, 4]: (b, kind, start, end), sorted by b then kind
    subj, obj = spans[spans[:, 1] == 0], spans[spans[:, 1] == 1]
    batch = entity_logits.shape[0]
    n_obj = torch.bincount(obj[:, 0], minlength=batch)
    per_subj = n_obj[subj[:, 0]]  # each subject meets every object of its sentence
    total = int(per_subj.sum())
    if total * head_logits.shape[1] > budget:
        return None
    si = torch.repeat_interleave(torch.arange(len(subj), device=spans.device), per_subj)
    offset = torch.arange(total, device=spans.device) - (torch.cumsum(per_subj, 0) - per_subj)[si]
    oi = (torch.cumsum(n_obj, 0) - n_obj)[subj[si, 0]] + offset
    b, sh, st, oh, ot = subj[si, 0], subj[si, 2], subj[si, 3], obj[oi, 2], obj[oi, 3]
    hit = (head_logits[b, :, sh, oh] > threshold) & (tail_logits[b, :, st, ot] > threshold)  # [pairs, P]
    k, p = hit.nonzero().unbind(-1)
    results: List[Set[Triple]] = [set() for _ in range(batch)]
    for row in torch.stack([b[k], sh[k], st[k], p, oh[k], ot[k]], dim=-1).tolist():
        results[row[0]].add(tuple(row[1:]))
    return results


@torch.no_grad()
def decode_triples(
    entity_logits: torch.Tensor,
    head_logits: torch.Tensor,
    tail_logits: torch.Tensor,
    threshold: float = 0.0,
    mask: Optional[torch.Tensor] = None,
    dense_budget: int = 1 << 20,
) -> List[Set[Triple]]:
    """Logits [B, 2, L, L], [B, P, L, L], [B, P, L, L] → per sample the set of (s_start, s_end, p, o_start, o_end).

    Same result as the post's loop (kexue.fm/archives/8888): subjects = spans with entity[0] > threshold, objects = spans with
    entity[1] > threshold, and (sh, st, p, oh, ot) is kept iff head[p, sh, oh] > threshold and
    tail[p, st, ot] > threshold. When P·|subjects|·|objects| ≤ `dense_budget` (a trained model) the head and
    tail cells of all subject × object pairs of the batch are gathered at once; otherwise, per sentence, a sparse
    join: every positive head cell (p, sh, oh) is paired with the subjects starting at sh and the objects starting
    at oh (`repeat_interleave`), then the tail cell is read,
    so memory scales with the head-consistent candidates, not with P·|subjects|·|objects|. (On an untrained model,
    where a large share of all logits is positive, the output itself can run to millions of triples, as the loop's.)

    mask [B, L] (optional; 0 = excluded): entities with a start or end at an excluded position are dropped — pass
    the attention mask with [CLS] and [SEP] zeroed to reproduce the post's `entity[:, [0, -1]] = -inf`.
    """
    if entity_logits.dim() != 4 or entity_logits.shape[1] != 2:
        raise ValueError(f"entity_logits must be [B, 2, L, L], got {tuple(entity_logits.shape)}")
    if head_logits.shape != tail_logits.shape or head_logits.shape[0] != entity_logits.shape[0]:
        raise ValueError("head_logits and tail_logits must be [B, P, L, L] with the batch of entity_logits")
    length = entity_logits.shape[-1]
    dense = _decode_pairs_dense(entity_logits, head_logits, tail_logits, threshold, mask, dense_budget)
    if dense is not None:
        return dense
    results: List[Set[Triple]] = []
    for b in range(entity_logits.shape[0]):
        ent = entity_logits[b] > threshold  # [2, L, L]
        if mask is not None:
            valid = mask[b].to(device=ent.device) != 0
            ent = ent & valid[None, :, None] & valid[None, None, :]
        subj = ent[0].nonzero()  # [S, 2], row-major: sorted by start
        obj = ent[1].nonzero()  # [O, 2]
        heads = (head_logits[b] > threshold).nonzero()  # [NH, 3]: (p, sh, oh)
        n_s = torch.bincount(subj[:, 0], minlength=length)  # subjects per start position
        n_o = torch.bincount(obj[:, 0], minlength=length)
        first_s = torch.cumsum(n_s, 0) - n_s  # index of the first subject with that start in `subj`
        first_o = torch.cumsum(n_o, 0) - n_o
        p, sh, oh = heads.unbind(-1)
        per_head = n_s[sh] * n_o[oh]  # candidate (subject, object) pairs behind each positive head cell
        cand = torch.repeat_interleave(torch.arange(len(heads), device=heads.device), per_head)
        offset = torch.arange(len(cand), device=heads.device) - (torch.cumsum(per_head, 0) - per_head)[cand]
        si = first_s[sh[cand]] + torch.div(offset, n_o[oh[cand]], rounding_mode="floor")
        oi = first_o[oh[cand]] + offset % n_o[oh[cand]]
        s_span, o_span, pc = subj[si], obj[oi], p[cand]
        keep = tail_logits[b][pc, s_span[:, 1], o_span[:, 1]] > threshold
        found = torch.stack([s_span[:, 0], s_span[:, 1], pc, o_span[:, 0], o_span[:, 1]], dim=-1)[keep]
        results.append({tuple(t) for t in found.tolist()})
    return results


__all__ = ["GPLinker", "Triple", "decode_triples", "flatten_pairs", "gplinker_loss", "gplinker_targets"]
