"""NBCE — Naive Bayes-based Context Extension (Su 2023, kexue.fm/archives/9617 and 9632; bojone/NBCE test.py,
final revision 1a4c178 of 2023-05-31).

Split a long context into chunks S_1..S_n that each fit the window; by naive Bayes

    log p(T|S_1..S_n) = (1+β) · P[log p(T|S_k)]_k − β · log p(T) + const

with row 0 = the same prompt with an empty context (the unconditional log p(T)). One step of the reference loop,
done here in fp32 whatever the model's dtype:

    logp  = log_softmax(logits)                          per row, [n+1, V]
    logp  = top_p(logp, 0.95)                            per row, −inf outside the nucleus
    H     = −Σ exp(logp) · clip(logp, −100, 0)           the clip avoids 0·(−inf) = nan
    H[k_prev] −= η                                       (from the second step on: stay on the chosen context)
    k     = argmin H[1:] + 1                             min-entropy pooling; row 0 is never chosen
    s     = (1+β)·logp[k] − β·logp[0],  logp[k] where logp[0] ≤ −100   (no +inf where row 0 was cut off)
    token = argmax s (τ = 0) or a draw from softmax(s/τ); the same token is appended to every row

`pooling="mean"` replaces logp[k] by the mean of the context rows' (clipped) log-probs (Su's first experiments).
The loop runs all rows as one left-padded batch with a KV cache; positions come from the attention mask, so a
padded row is numbered exactly as if it ran alone. The decode loop and the token draw are kslm.nn.generate's
(`decode`, `sample_next` without a nucleus: the nucleus is the per-row one above); this module holds NBCE's step.
"""

import inspect
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch

from kslm.nn.attention import positions_from_mask
from kslm.nn.generate import decode, sample_next

# lm(input_ids [B, T], attention_mask [B, past + T], state, prompt_length) → (last-position logits [B, V], state);
# state None starts a fresh cache (and the caller may drop the returned state to recompute from scratch).
CausalLM = Callable[[torch.Tensor, torch.Tensor, object, int], Tuple[torch.Tensor, object]]


def top_p_filter(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter with the semantics of Hugging Face's TopPLogitsWarper (the reference loop's processor): sort
    ascending, drop the tokens whose cumulative probability from the bottom is ≤ 1 − top_p, keep at least one."""
    if top_p >= 1.0:
        return logp
    sorted_logp, order = torch.sort(logp, descending=False)
    cum = sorted_logp.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= (1 - top_p)
    drop[..., -1:] = False
    return logp.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """H = −Σ p·log p over the last axis, with log p clipped to [−100, 0] so that filtered tokens give 0, not nan."""
    return -(logp.exp() * logp.clip(-100, 0)).sum(-1)


def nbce_scores(logits: torch.Tensor, beta: float = 0.25, eta: float = 0.1, top_p: float = 0.95,
                prev_k: Optional[int] = None, pooling: str = "min_entropy") -> Tuple[torch.Tensor, int]:
    """logits [n+1, V] (row 0 = no context) → (merged scores [V] in fp32, chosen row k ≥ 1; 0 for mean pooling)."""
    if logits.shape[0] < 2:
        raise ValueError("NBCE needs the no-context row and at least one context row")
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp = top_p_filter(logp, top_p)
    if pooling == "min_entropy":
        H = entropy(logp)
        if prev_k is not None:
            H[prev_k] -= eta
        k = int(H[1:].argmin()) + 1
        pooled = logp[k]
    elif pooling == "mean":
        k, pooled = 0, logp[1:].clip(min=-100).mean(0)
    else:
        raise ValueError(f"unknown pooling {pooling!r} (min_entropy | mean)")
    merged = (1 + beta) * pooled - beta * logp[0]
    return torch.where(logp[0] > -100, merged, pooled), k


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token lists → (ids [B, L], attention_mask [B, L]) padded on the left, so every row ends at column L − 1."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, L - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, L - len(p):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def nbce_generate(lm: CausalLM, prompts: Sequence[Sequence[int]], eos_ids: Iterable[int], max_new_tokens: int,
                  beta: float = 0.25, eta: float = 0.1, top_p: float = 0.95, temperature: float = 0.0,
                  pooling: str = "min_entropy", generator: Optional[torch.Generator] = None, pad_id: int = 0,
                  device=None, use_cache: bool = True) -> Tuple[List[int], List[int]]:
    """prompts[0] = the no-context prompt, prompts[1:] = one per context. → (new tokens, chosen row per token).

    use_cache=False recomputes every row from scratch at every step (the naive loop, for tests and benchmarks)."""
    ids, mask = left_pad(prompts, pad_id, device)
    prompt_length, state, prefilled, ks = ids.shape[1], None, False, []

    def step(new: torch.Tensor) -> torch.Tensor:  # new: the padded prompts, then the chosen token in every row
        nonlocal ids, mask, state, prefilled
        if prefilled:
            ids, mask = torch.cat([ids, new], dim=1), torch.cat([mask, torch.ones_like(new)], dim=1)
        prefilled = True
        if not use_cache:
            return lm(ids, mask, None, prompt_length)[0]
        logits, state = lm(new, mask, state, prompt_length)
        return logits

    def pick(logits: torch.Tensor) -> torch.Tensor:
        scores, k = nbce_scores(logits, beta, eta, top_p, ks[-1] if ks else None, pooling)
        ks.append(k)
        return sample_next(scores[None], temperature, None, generator)

    out = decode(step, ids, max_new_tokens, eos_ids, pick)
    return out, ks[:len(out)]  # the step that drew EOS chose a row too


class BackboneLM:
    """A kslm Backbone as a CausalLM: its dict KV cache; positions from the attention mask (Backbone.positions);
    a prefix-LM backbone sees the (padded) prompt as its prefix."""

    def __init__(self, backbone):
        if backbone.cfg.mask == "bidirectional":
            raise ValueError("a bidirectional (masked-LM) backbone cannot generate; use mask causal or prefix")
        self.backbone = backbone
        self.window = backbone.cfg.max_length

    def __call__(self, ids, attention_mask, state, prompt_length):
        state = {} if state is None else state
        prefix = None
        if self.backbone.cfg.mask == "prefix":
            prefix = torch.full((ids.shape[0],), prompt_length, device=ids.device)
        hidden = self.backbone(ids, attention_mask=attention_mask, prefix_lengths=prefix, cache=state)
        return self.backbone.logits(hidden[:, -1]).float(), state


class HFCausalLM:
    """A Hugging Face causal LM as a CausalLM: its own cache object, explicit position_ids from the attention mask
    (left padding), and logits for the last position only (`logits_to_keep=1`: no [B, L, V] tensor at prefill).
    The cache goes in and comes out under the name the model's forward takes: `cache` (transformers 5.x, where
    `past_key_values` is deprecated) or `past_key_values` (4.x)."""

    def __init__(self, model):
        self.model = model
        self.window = getattr(model.config, "max_position_embeddings", None)
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def __call__(self, ids, attention_mask, state, prompt_length):
        positions = positions_from_mask(attention_mask, ids.shape[1])
        out = self.model(input_ids=ids, attention_mask=attention_mask, position_ids=positions,
                         use_cache=state is not None or ids.shape[1] == prompt_length, logits_to_keep=1,
                         **{self.cache_arg: state})
        return out.logits[:, -1].float(), out.get(self.cache_arg)  # None without use_cache


__all__ = ["top_p_filter", "entropy", "nbce_scores", "left_pad", "positions_from_mask", "nbce_generate",
           "BackboneLM", "HFCausalLM"]
