"""Token embedding and the LM output head, tied or untied (Su, kexue.fm/archives/9698).

With near-identity residual branches the untrained tied model is a 2-gram model whose logits are
(w_i/σ)·w_j, so the initial loss is ≈ log(e^{dσ} + V − 1): ≈ √d for σ = 1/√d. Su's remedies, `tied_init`:
    rescaled   σ = ln V / d  ⇒ e^{dσ} = V ⇒ initial loss ≈ ln(2V − 1)
    swap       keep σ = 1/√d, swap the two halves of the final normalised feature before the tied matmul
    ortho      keep σ = 1/√d, an orthogonally initialised d×d projection after the final norm
    none       plain tying, σ = 1/√d (the failure case)
Untied heads get their own d→V matrix with std 1/√d (initial loss ≈ ln V + ½). No logit rescaling anywhere.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def embedding_std(vocab_size: int, d_model: int, tie: bool, tied_init: str) -> float:
    if tie and tied_init == "rescaled":
        return math.log(vocab_size) / d_model
    return 1.0 / math.sqrt(d_model)


class LMHead(nn.Module):
    """logits = S(h) · Wᵀ with W the embedding matrix (tied) or a separate matrix (untied)."""

    def __init__(self, vocab_size: int, d_model: int, tie: bool, tied_init: str):
        super().__init__()
        if tied_init not in ("rescaled", "swap", "ortho", "none"):
            raise ValueError(f"unknown tied_init {tied_init!r} (rescaled | swap | ortho | none)")
        self.tie, self.tied_init, self.d_model = tie, tied_init if tie else "none", d_model
        self.proj = None if tie else nn.Linear(d_model, vocab_size, bias=False)
        self.ortho = nn.Linear(d_model, d_model, bias=False) if self.tied_init == "ortho" else None

    def reset_parameters(self):
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=1 / math.sqrt(self.d_model))
        if self.ortho is not None:
            nn.init.orthogonal_(self.ortho.weight)

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        if self.tied_init == "swap":
            half = self.d_model // 2
            return torch.cat([h[..., half:], h[..., :half]], dim=-1)
        if self.ortho is not None:
            return self.ortho(h)
        return h

    def forward(self, h: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        weight = embedding_weight if self.tie else self.proj.weight
        return F.linear(self.transform(h), weight)
