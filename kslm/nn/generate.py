"""Next-token choice and the KV-cached decode loop, shared by `LanguageModel.generate` (`kslm predict` with an LM)
and NBCE (`kslm.nn.nbce.nbce_generate`). Pure PyTorch.

sample_next(logits [B, V], τ, top_p, generator) → ids [B], one per row:

    τ ≤ 0        argmax (the first index on ties); the generator is not used
    top_p None   a draw from softmax(logits / τ) over the whole vocabulary (NBCE, whose nucleus is cut per row
                 before its merge, in kslm.nn.nbce)
    top_p = p    nucleus sampling (Holtzman et al. 2020): probs = softmax(logits / τ) sorted descending; token i is
                 kept while the mass before it, Σ_{j<i} p_j, is < p — the smallest set whose mass reaches p (the top
                 token always); the kept probabilities are renormalised and one is drawn

Draws are torch.multinomial on each row in turn with `generator`, so a seeded generator gives the same tokens
again. top_p = 1 keeps every token (up to fp32 rounding of the cumulative sum) but draws over the sorted order,
so for one seed it gives other tokens than top_p None; both are the ops the callers have always used (stored
results in README and experiments/ depend on them), which tests/nn/test_generate.py pins against copies of
the earlier loops.

decode(step_fn, first_input, max_new_tokens, eos_ids, pick) → new token ids: one sequence decoded step by step.
step_fn(new_tokens [B, T]) runs the model on the tokens not yet seen — first `first_input` (the prefill), then the
chosen token repeated over the B rows, [B, 1] — and returns the next-token logits; it holds the KV cache (or
recomputes from scratch: the loop does not care). pick(logits) → the next token (an int or a one-element tensor):
`sample_next` for a plain LM, NBCE's pooled and merged scores for NBCE. Decoding stops before a token in eos_ids
(not returned) or after max_new_tokens tokens.
"""

from typing import Callable, Iterable, Iterator, List, Optional

import torch

StepFn = Callable[[torch.Tensor], torch.Tensor]
Pick = Callable[[torch.Tensor], object]


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: Optional[float] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits [B, V] (fp32) → next token ids [B] (long): argmax at τ ≤ 0, else a draw (nucleus when top_p is set)."""
    if logits.dim() != 2:
        raise ValueError(f"sample_next expects logits [B, V], got shape {tuple(logits.shape)}")
    if temperature <= 0:
        return logits.argmax(-1)
    if top_p is not None and not top_p > 0:
        raise ValueError(f"top_p must be > 0, got {top_p}")
    probs = torch.softmax(logits / temperature, -1)
    picks = []
    for row in probs:
        if top_p is None:
            picks.append(torch.multinomial(row, 1, generator=generator))
            continue
        sp, si = row.sort(descending=True)
        keep = sp.cumsum(0) - sp < top_p  # the mass before each token: the smallest set whose mass reaches top_p
        sp = sp * keep
        picks.append(si[torch.multinomial(sp / sp.sum(), 1, generator=generator)])
    return torch.cat(picks)


def decode_stream(step_fn: StepFn, first_input: torch.Tensor, max_new_tokens: int, eos_ids: Iterable[int],
                  pick: Pick) -> Iterator[int]:
    """step_fn(first_input), then step_fn(token repeated over the rows, [B, 1]) per generated token; pick(logits)
    chooses each token. Yields the new tokens as they come, without the EOS that stops decoding."""
    eos = set(eos_ids)
    step_in = first_input
    for _ in range(max_new_tokens):
        with torch.no_grad():
            tok = int(pick(step_fn(step_in)))
        if tok in eos:
            return
        yield tok
        step_in = torch.full((first_input.shape[0], 1), tok, dtype=torch.long, device=first_input.device)


def decode(step_fn: StepFn, first_input: torch.Tensor, max_new_tokens: int, eos_ids: Iterable[int],
           pick: Pick) -> List[int]:
    """decode_stream's tokens, all at once."""
    return list(decode_stream(step_fn, first_input, max_new_tokens, eos_ids, pick))


__all__ = ["sample_next", "decode", "decode_stream"]
