"""kslm.nn.generate: sample_next against an independent float64 nucleus and plain argmax, its edge cases, the
decode loop's EOS and budget, KV-cached decoding against a full recompute — and bit-identity of both callers
(LanguageModel.generate, nbce_generate) with copies of the loops they had before they shared this module, since
stored greedy and seeded outputs (README, experiments/) depend on those exact draws."""

import math

import pytest
import torch
from helpers import tiny_backbone

from kslm.data.tokenizer import EOS_ID
from kslm.nn.generate import decode, sample_next
from kslm.nn.nbce import BackboneLM, left_pad, nbce_generate, nbce_scores

# float32, untied; n_heads also for block rnn, whose tiny_config leaves the attention sizes at their defaults
LM = {"d_model": 32, "n_heads": 2, "qk_dim": 16, "tie_embeddings": False, "double": False}


def random_logits(B, V, seed, scale=3.0):
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * scale


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------- the earlier code, kept as the reference
def old_lm_pick(logits, temperature, top_p, generator):
    """LanguageModel.generate's token choice before kslm.nn.generate (logits [1, V])."""
    if temperature <= 0:
        return int(logits.argmax(-1))
    probs = torch.softmax(logits / temperature, -1)[0]
    sp, si = probs.sort(descending=True)
    keep = sp.cumsum(0) - sp < top_p
    sp = sp * keep
    return int(si[torch.multinomial(sp / sp.sum(), 1, generator=generator)])


def old_nbce_choose(scores, temperature, generator):
    """kslm.nn.nbce.choose_token before kslm.nn.generate (scores [V])."""
    if temperature <= 0:
        return int(scores.argmax())
    probs = torch.softmax(scores / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def old_lm_generate(backbone, prompt_ids, max_new_tokens, temperature, top_p, generator):
    """LanguageModel.generate's body before kslm.nn.generate."""
    ids = torch.tensor([[EOS_ID] + list(prompt_ids)])
    budget = backbone.cfg.max_length - ids.shape[1]
    prefix = torch.tensor([ids.shape[1]])
    cache, out, step_in = {}, [], ids
    for _ in range(min(max_new_tokens, budget)):
        logits = backbone.logits(backbone(step_in, prefix_lengths=prefix, cache=cache)[:, -1]).float()
        nxt = old_lm_pick(logits, temperature, top_p, generator)
        if nxt == EOS_ID:
            break
        out.append(nxt)
        step_in = torch.tensor([[nxt]])
    return out


@torch.no_grad()
def old_nbce_generate(lm, prompts, eos_ids, max_new_tokens, beta=0.25, eta=0.1, top_p=0.95, temperature=0.0,
                      pooling="min_entropy", generator=None, use_cache=True):
    """kslm.nn.nbce.nbce_generate before kslm.nn.generate."""
    eos = set(eos_ids)
    ids, mask = left_pad(prompts)
    prompt_length = ids.shape[1]
    state, step_in, out, chosen, k = None, ids, [], [], None
    for _ in range(max_new_tokens):
        if use_cache:
            logits, state = lm(step_in, mask, state, prompt_length)
        else:
            logits, _ = lm(ids, mask, None, prompt_length)
        scores, k = nbce_scores(logits, beta, eta, top_p, k, pooling)
        tok = old_nbce_choose(scores, temperature, generator)
        if tok in eos:
            break
        out.append(tok)
        chosen.append(k)
        step_in = torch.full((ids.shape[0], 1), tok, dtype=torch.long, device=ids.device)
        ids = torch.cat([ids, step_in], dim=1)
        mask = torch.cat([mask, torch.ones_like(step_in)], dim=1)
    return out, chosen


# ------------------------------------------------------------------------------------ sample_next
@pytest.mark.parametrize("V", [5, 50, 1000])
def test_sample_next_draws_equal_the_earlier_ops(V):
    for seed in range(12):
        logits = random_logits(1, V, seed, scale=[0.5, 3.0, 10.0][seed % 3])
        for T in (0.0, 0.01, 0.5, 1.0, 3.0):
            for p in (0.1, 0.5, 0.9, 0.95, 1.0):
                g_old, g_new = gen(seed), gen(seed)
                old = [old_lm_pick(logits, T, p, g_old) for _ in range(3)]
                new = [int(sample_next(logits, T, p, g_new)) for _ in range(3)]
                assert new == old, (V, seed, T, p)
            scores = logits[0].clone()
            scores[torch.arange(V) % 3 == 1] = float("-inf")  # NBCE's scores carry −inf outside the row nuclei
            g_old, g_new = gen(seed), gen(seed)
            old = [old_nbce_choose(scores, T, g_old) for _ in range(3)]
            new = [int(sample_next(scores[None], T, None, g_new)) for _ in range(3)]
            assert new == old, (V, seed, T)


def test_rows_draw_in_turn_from_one_generator():
    logits = random_logits(4, 30, 0)
    g_old, g_new = gen(3), gen(3)
    old = [old_lm_pick(row[None], 0.8, 0.9, g_old) for row in logits]
    assert sample_next(logits, 0.8, 0.9, g_new).tolist() == old


def nucleus64(logits, temperature, top_p):
    """The nucleus in float64 Python: tokens by descending probability until their mass reaches top_p; → (set,
    renormalised probabilities, the smallest gap between a cumulative mass and top_p)."""
    z = [x / temperature for x in logits.tolist()]
    m = max(z)
    e = [math.exp(x - m) for x in z]
    s = sum(e)
    p = [x / s for x in e]
    order = sorted(range(len(p)), key=lambda i: -p[i])
    kept, mass, gap = [], 0.0, float("inf")
    for i in order:
        if mass >= top_p:
            break
        kept.append(i)
        mass += p[i]
        gap = min(gap, abs(mass - top_p))
    return set(kept), {i: p[i] / mass for i in kept}, gap


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.8, 0.95])
def test_nucleus_against_float64(top_p):
    n = 2000
    for seed in range(3):
        logits = random_logits(1, 8, 10 + seed, scale=1.5)
        kept, want, gap = nucleus64(logits[0], 0.9, top_p)
        assert gap > 1e-4  # no boundary within fp32 rounding
        drawn = sample_next(logits.expand(n, -1), 0.9, top_p, gen(seed)).tolist()
        assert set(drawn) == kept
        for i, q in want.items():
            assert abs(drawn.count(i) / n - q) < 0.04, (seed, i)


def test_greedy_is_argmax_and_ignores_top_p_and_generator():
    logits = random_logits(5, 40, 1)
    logits[2, 7] = logits[2, 9] = logits[2].max() + 1  # a tie: the first index
    g = gen(0)
    state = g.get_state()
    for T in (0.0, -1.0):
        for p in (None, 0.01, 0.9, 1.0):
            assert torch.equal(sample_next(logits, T, p, g), torch.tensor([int(r.argmax()) for r in logits]))
    assert int(sample_next(logits, 0.0)[2]) == 7
    assert torch.equal(g.get_state(), state)  # greedy draws nothing


def test_top_p_edges():
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0]])
    want = torch.softmax(logits[0], -1)
    n = 3000
    for top_p in (1.0, None):  # the whole distribution (sorted draws or not)
        drawn = sample_next(logits.expand(n, -1), 1.0, top_p, gen(1)).tolist()
        assert set(drawn) == set(range(5))
        for i in range(5):
            assert abs(drawn.count(i) / n - float(want[i])) < 0.03
    assert set(sample_next(logits.expand(200, -1), 5.0, 1e-9, gen(2)).tolist()) == {0}  # the top token is always kept
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        sample_next(logits[0], 1.0)


# ----------------------------------------------------------------------------------------- decode
def scripted(tokens, V=10):
    """A step_fn whose argmax follows `tokens`, recording what it was fed."""
    fed = []

    def step(new):
        fed.append(new.clone())
        logits = torch.zeros(new.shape[0], V)
        logits[:, tokens[len(fed) - 1]] = 1.0
        return logits

    return step, fed


def greedy(logits):
    return sample_next(logits[:1], 0.0)


def test_decode_stops_at_eos_and_feeds_the_token_to_every_row():
    step, fed = scripted([4, 5, 6, 2, 7])
    first = torch.tensor([[1, 1, 1], [0, 1, 1]])
    assert decode(step, first, 10, [2, 9], greedy) == [4, 5, 6]
    assert len(fed) == 4 and torch.equal(fed[0], first)  # the prefill, then one step per kept token; EOS ends without a step
    assert [f.tolist() for f in fed[1:]] == [[[4], [4]], [[5], [5]], [[6], [6]]]
    step, fed = scripted([4, 5, 6, 2, 7])
    assert decode(step, first, 2, [2], greedy) == [4, 5] and len(fed) == 2  # the budget
    step, fed = scripted([2, 5])
    assert decode(step, first, 5, [2], greedy) == [] and len(fed) == 1  # EOS first
    step, fed = scripted([4, 5, 6, 2, 7])
    assert decode(step, first, 5, [], greedy) == [4, 5, 6, 2, 7]  # no EOS: an EOS id is an ordinary token
    assert decode(step, first, 0, [2], greedy) == []


def test_greedy_decode_equals_argmax_loop():
    model = tiny_backbone(**LM, vocab_size=60, max_length=96)
    prompt = [5, 17, 9, 30, 2, 11]
    with torch.no_grad():
        want, seq = [], list(prompt)
        for _ in range(25):
            tok = int(model.logits(model(torch.tensor([seq]))[:, -1]).argmax())
            if tok == 3:
                break
            want.append(tok)
            seq.append(tok)
        cache = {}
        got = decode(lambda new: model.logits(model(new, cache=cache)[:, -1]).float(), torch.tensor([prompt]), 25, [3],
                     greedy)
    assert got == want and len(got) > 3


@pytest.mark.parametrize("block", ["transformer", "gau", "rnn"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cached_decode_equals_full_recompute(block, temperature):
    model = tiny_backbone(block, seed=1, **LM, vocab_size=50, max_length=96)
    first = torch.randint(4, 50, (2, 9), generator=gen(7))
    runs = {}
    with torch.no_grad():
        for cached in (True, False):
            cache, seq, seen = {}, [first], []

            def step(new, cache=cache, seq=seq, seen=seen, cached=cached):
                if new is not first:
                    seq.append(new)
                x = new if cached else torch.cat(seq, 1)
                logits = model.logits(model(x, cache=cache if cached else None)[:, -1]).float()
                seen.append(logits)
                return logits

            g = gen(5)
            tokens = decode(step, first, 20, [], lambda lg: sample_next(lg[:1], temperature, 0.9, g))  # noqa: B023
            runs[cached] = tokens, seen
    assert runs[True][0] == runs[False][0] and len(runs[True][0]) == 20
    for a, b in zip(runs[True][1], runs[False][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- the callers, bit for bit as before
@pytest.mark.parametrize("block,mask", [("transformer", "causal"), ("gau", "causal"), ("transformer", "prefix")])
def test_language_model_generate_equals_the_earlier_loop(block, mask):
    from kslm.tasks.lm import LanguageModel

    backbone = tiny_backbone(block, mask, seed=2, **LM, vocab_size=300, max_length=64)
    lm = LanguageModel(backbone=backbone.cfg)
    lm.backbone = backbone.eval()
    n_sampled = 0
    for seed in range(3):
        prompt = torch.randint(5, 300, (4 + 7 * seed,), generator=gen(100 + seed)).tolist()
        for T, p in [(0.0, 1.0), (0.7, 0.5), (0.7, 0.95), (1.5, 1.0), (1.0, 0.9)]:
            budget = 80 if seed == 2 else 15  # seed 2: capped by max_length
            old = old_lm_generate(backbone, prompt, budget, T, p, gen(seed))
            new = lm.generate(prompt, budget, T, p, gen(seed))
            assert new == old, (seed, T, p)
            n_sampled += T > 0 and new != old_lm_generate(backbone, prompt, budget, 0.0, 1.0, None)
    assert n_sampled > 5  # the seeded draws are not just the greedy tokens


@pytest.mark.parametrize("block,mask", [("transformer", "causal"), ("transformer", "prefix")])
def test_nbce_generate_equals_the_earlier_loop(block, mask):
    lm = BackboneLM(tiny_backbone(block, mask, seed=3, **LM, vocab_size=50, max_length=96))
    for seed in range(2):
        g = gen(1000 + seed)
        prompts = [torch.randint(5, 50, (n,), generator=g).tolist() for n in (4 + seed, 11, 7, 20)]
        for T in (0.0, 0.5, 1.0):
            for p in (0.8, 1.0):
                for pooling in ("min_entropy", "mean"):
                    for cache in (True, False):
                        kw = dict(temperature=T, top_p=p, pooling=pooling, use_cache=cache)
                        old = old_nbce_generate(lm, prompts, [3], 15, generator=gen(seed), **kw)
                        new = nbce_generate(lm, prompts, [3], 15, generator=gen(seed), **kw)
                        assert new == old, (seed, T, p, pooling, cache)
