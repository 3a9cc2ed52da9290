"""An independent port of the reference NBCE loop (bojone/NBCE test.py, final revision 1a4c178) over a Hugging Face
causal LM — HF's own KV cache and top-p warper, τ → 0 (argmax). bench/nbce.py times it and tests/test_nbce.py
checks kslm's NBCE against it (`from bench.nbce_reference import reference_loop`; it lives here, beside its benchmark,
because benchmark code must not import from tests/)."""

import torch


def reference_loop(model, input_ids, attention_mask, max_tokens, eos_id=None, beta=0.25, eta=0.1, top_p=0.95):
    """bojone/NBCE test.py (final revision 1a4c178) over a Hugging Face causal LM, with τ → 0 (argmax)."""
    import inspect

    from transformers import LogitsProcessorList, TopPLogitsWarper

    processors = LogitsProcessorList([TopPLogitsWarper(top_p)])
    # transformers 5.x takes and returns the cache as `cache` (`past_key_values` deprecated); 4.x as `past_key_values`
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    n, past, preds, k = input_ids.shape[0], None, [], None
    with torch.no_grad():
        for i in range(max_tokens):
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **{cache_arg: past})
            past = out[cache_arg]
            logits = out.logits[:, -1].float()
            logits = logits - logits.logsumexp(dim=-1, keepdim=True)
            logits = processors(input_ids, logits)
            ent = -(logits.exp() * logits.clip(-100, 0)).sum(dim=-1)
            if i > 0:
                ent[k] -= eta
            k = ent[1:].argmin() + 1
            merged = (1 + beta) * logits[k] - beta * logits[0]
            logits = torch.where(logits[0] > -100, merged, logits[k])
            tok = int(logits.argmax())
            if tok == eos_id:
                break
            preds.append(tok)
            input_ids = torch.tensor([[tok]], device=attention_mask.device).tile(n, 1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(n, 1)], dim=-1)
    return preds
