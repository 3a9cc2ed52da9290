"""Multilabel "softmax + cross-entropy" (MCCE; Su, kexue.fm/archives/7359) and its sparse form (archives/8888).

With raw scores s (no sigmoid/softmax) and a threshold class fixed at score 0 (predict the classes with s > 0):

    L = log(1 + Σ_{i∈neg} e^{s_i}) + log(1 + Σ_{j∈pos} e^{−s_j})

Sparse form (bert4keras `sparse_multilabel_categorical_crossentropy`, GPLinker): only the positive indices P
are given. With a = log(1 + Σ_A e^{s}) over all classes A and b = log Σ_P e^{s},

    neg = a + log(clip(1 − e^{b−a}, ε, 1)),   ε = 1e-7 (Keras `K.epsilon()`),   pos = log(1 + Σ_P e^{−s})

which equals the dense loss while the clip is inactive, i.e. while (1 + Σ_neg e^{s}) ≥ ε·(1 + Σ_A e^{s}). When the
positives hold almost all the mass (a positive score ≳ 16 with the negatives ≲ 0) it reads a + log ε instead, as in
bert4keras; fp32 also loses accuracy in 1 − e^{b−a} as it approaches ε.

Both return the per-row loss, shape y_pred.shape[:-1], computed in at least fp32 (half inputs are upcast; float64
stays float64); the caller reduces (NER dense: mean over batch × heads; GPLinker sparse: sum heads, mean batch).
Both are keyword-only: the (y_true, y_pred) vs (y_pred, y_true) order differs between ports.
"""

import torch

SPARSE_MCCE_EPS = 1e-7  # Keras K.epsilon(), the clip in bert4keras' sparse MCCE

_NEG_INF = float("-inf")
_BIG = 1e5  # stands for inf in the sparse loss: e^(−1e5) underflows to 0 in float64


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _logsumexp_with_zero(x: torch.Tensor) -> torch.Tensor:
    """log(1 + Σ e^x) over the last axis: the appended 0 is the threshold class, and keeps the result finite."""
    return torch.logsumexp(torch.cat([x, x.new_zeros(x.shape[:-1] + (1,))], dim=-1), dim=-1)


def multilabel_categorical_crossentropy(*, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Dense MCCE per row. y_true: {0, 1} (any dtype; nonzero = positive), same shape as y_pred (raw scores).
    Classes with y_pred = −inf (masked) are neither positive nor negative; their gradient is 0."""
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} must have the same shape")
    s = _upcast(y_pred)
    pos = y_true != 0
    masked = s == _NEG_INF
    neg_loss = _logsumexp_with_zero(s.masked_fill(pos | masked, _NEG_INF))
    pos_loss = _logsumexp_with_zero((-s).masked_fill(~pos | masked, _NEG_INF))  # masked_fill drops −(−inf) and its grad
    return neg_loss + pos_loss


def sparse_multilabel_categorical_crossentropy(
    *, y_true: torch.Tensor, y_pred: torch.Tensor, mask_zero: bool = False
) -> torch.Tensor:
    """Sparse MCCE per row (bert4keras form). y_true: integer indices of the positive classes, [..., K], distinct
    within a row; y_pred: raw scores [..., N] with the same leading shape. mask_zero=True: index 0 is padding and
    class 0 is dropped from the loss altogether (neither positive nor negative), as in bert4keras — for GPLinker's
    flattened i·n + j labels that is the [CLS]–[CLS] cell. Without it every index counts, so rows need exactly K
    positives. Indices must lie in [0, N)."""
    if y_true.shape[:-1] != y_pred.shape[:-1]:  # torch.gather would silently read a sub-block instead
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} differ before the last axis")
    # masked scores (−inf) and the padding class enter as ∓_BIG instead of ∓inf: e^−_BIG is exactly 0 even in
    # float64, so values and first derivatives are those of ±inf, while a second derivative (the input gradient
    # penalty differentiates this loss twice) stays finite instead of inf − inf = NaN
    s = _upcast(y_pred).clamp(min=-_BIG)
    zeros = s.new_zeros(s.shape[:-1] + (1,))
    s = torch.cat([s, zeros], dim=-1)  # class N: the threshold, score 0
    idx = y_true.long()
    if mask_zero:  # class 0 at +big for the positives (e^−s adds nothing), at −big for a and b
        s_for_pos = torch.cat([zeros + _BIG, s[..., 1:]], dim=-1)
        s_all = torch.cat([zeros - _BIG, s[..., 1:]], dim=-1)
    else:
        s_for_pos = s_all = s
    pos_loss = _logsumexp_with_zero(-s_for_pos.gather(-1, idx))
    all_loss = torch.logsumexp(s_all, dim=-1)
    aux_loss = torch.logsumexp(s_all.gather(-1, idx), dim=-1) - all_loss
    neg_loss = all_loss + torch.log(torch.clamp(1 - torch.exp(aux_loss), SPARSE_MCCE_EPS, 1))
    return pos_loss + neg_loss


__all__ = ["SPARSE_MCCE_EPS", "multilabel_categorical_crossentropy", "sparse_multilabel_categorical_crossentropy"]
