"""The prefix-LM (UniLM, kexue.fm/archives/9529) loss boundary of `LanguageModel.lm_loss`, pinned exactly.

Position t predicts token t+1. With a prefix of p tokens (positions 0..p−1 attend both ways), the target of t < p − 1
is a prefix token that position t can see, so it must not be counted; t = p − 1 predicts the first continuation
token from the last prefix position, which cannot see it, so it must be counted. The loss is the token mean of
−log softmax(logits[b, t])[ids[b, t + 1]] over t ≥ p_b − 1. Shifting the boundary by one either way (`t < p` drops a
legitimate target; `t < p − 2` counts a target the prefix attention lets the model copy) must fail here.
"""

import pytest
import torch
from helpers import tiny_config

from kslm.data.tokenizer import SPECIAL_TOKENS, train_tokenizer
from kslm.tasks.lm import LanguageModel

B, T = 6, 12  # ids [B, T + 1]: inputs ids[:, :T], targets ids[:, 1:]
SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def tokenizer():
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))[:20_000]
    return train_tokenizer([text], kind="bpe", vocab_size=300)


def tiny_prefix_lm(tokenizer, block):
    torch.manual_seed(0)
    model = LanguageModel(backbone=tiny_config(block, "prefix", vocab_size=None, d_model=32, qk_dim=16, dropout=0.0))
    model.build(tokenizer)
    return model.eval()


def random_ids(vocab, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(len(SPECIAL_TOKENS), vocab, (B, T + 1), generator=g)


def prefix_draw(seed):
    """The prefix lengths lm_loss draws from a generator seeded with `seed`: one per sample, in [1, T − 1]."""
    return torch.randint(1, T, (B,), generator=torch.Generator().manual_seed(seed))


def naive_loss(logits, ids, prefix, shift=1):
    """Token mean over the batch of −log softmax(logits[b, t])[ids[b, t + 1]] for t ≥ p_b − shift, float64, one
    (b, t) at a time. shift = 1 is the correct boundary; 0 and 2 are the off-by-one variants."""
    total, count = 0.0, 0
    for b in range(B):
        for t in range(max(int(prefix[b]) - shift, 0), T):
            row = logits[b, t].double()
            total += (torch.logsumexp(row, 0) - row[ids[b, t + 1]]).item()
            count += 1
    return total / count, count


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_loss_matches_float64_loop_over_the_continuation(tokenizer, block):
    model = tiny_prefix_lm(tokenizer, block)
    V = model.backbone_config.vocab_size
    drawn = set()
    for seed in SEEDS:
        ids = random_ids(V, seed)
        with torch.no_grad():
            loss, n = model.lm_loss(ids, torch.Generator().manual_seed(seed))
            prefix = prefix_draw(seed)
            drawn |= set(prefix.tolist())
            logits = model.backbone.logits(model.backbone(ids[:, :-1], prefix_lengths=prefix))
        want, count = naive_loss(logits, ids, prefix)
        assert int(n) == count == sum(T - int(p) + 1 for p in prefix), (seed, prefix.tolist())
        assert abs(loss.item() - want) < 1e-5, (seed, loss.item(), want)
        # the check is sharp: either off-by-one boundary moves the loss far beyond the tolerance
        for shift in (0, 2):
            other, other_count = naive_loss(logits, ids, prefix, shift)
            assert other_count != count and abs(other - want) > 1e-3, (seed, shift, other, want)
    assert {1, T - 1} <= drawn  # the seeds cover both ends of the prefix range


def _counted_positions(model, ids, seed, monkeypatch):
    """[B, T] bool: the positions whose logits the loss depends on (nonzero gradient), found without looking at how
    lm_loss encodes its targets."""
    kept = {}
    original = model.backbone.logits

    def logits(hidden):
        out = original(hidden)
        out.retain_grad()
        kept["logits"] = out
        return out

    monkeypatch.setattr(model.backbone, "logits", logits)
    loss, _ = model.lm_loss(ids, torch.Generator().manual_seed(seed))
    loss.backward()
    monkeypatch.undo()
    return kept["logits"].grad.abs().amax(-1) > 0


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_loss_reads_exactly_positions_from_last_prefix_token_on(tokenizer, block, monkeypatch):
    model = tiny_prefix_lm(tokenizer, block)
    for seed in SEEDS:
        ids = random_ids(model.backbone_config.vocab_size, seed)
        counted = _counted_positions(model, ids, seed, monkeypatch)
        want = torch.arange(T)[None] >= prefix_draw(seed)[:, None] - 1
        assert torch.equal(counted, want), (seed, prefix_draw(seed).tolist(), counted.int())


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_no_counted_target_is_visible_to_the_position_predicting_it(tokenizer, block, monkeypatch):
    """Replacing the target token ids[b, t + 1] must leave logits[b, t] unchanged at every counted (b, t); and the
    boundary is tight: at t = p_b − 2 (the last excluded position) the target is a prefix token that does change
    logits[b, t], so counting it would let the model copy its answer."""
    model = tiny_prefix_lm(tokenizer, block)
    V = model.backbone_config.vocab_size
    for seed in SEEDS:
        ids = random_ids(V, seed)
        prefix = prefix_draw(seed)
        counted = _counted_positions(model, ids, seed, monkeypatch)
        with torch.no_grad():
            base = model.backbone.logits(model.backbone(ids[:, :-1], prefix_lengths=prefix))
            for t in range(T - 1):  # the target of t = T − 1 is not an input token at all
                changed = ids.clone()
                changed[:, t + 1] = len(SPECIAL_TOKENS) + (ids[:, t + 1] - len(SPECIAL_TOKENS) + 1) % (V - len(SPECIAL_TOKENS))
                out = model.backbone.logits(model.backbone(changed[:, :-1], prefix_lengths=prefix))
                moved = (out[:, t] - base[:, t]).abs().amax(-1)
                for b in range(B):
                    if counted[b, t]:
                        assert moved[b] < 1e-6, (seed, b, t, int(prefix[b]), moved[b].item())
                    elif t == int(prefix[b]) - 2:
                        assert moved[b] > 1e-4, (seed, b, t, int(prefix[b]), moved[b].item())
