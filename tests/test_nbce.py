"""NBCE: the merge step against the formula, the cached loop against a naive recompute, left padding, the data
splitting and `kslm predict` end to end (kslm LM checkpoint and a tiny Hugging Face Llama)."""

import json
import math

import pytest
import torch
from helpers import REPO, read_jsonl, run_cli, tiny_args, tiny_backbone

from bench.nbce_reference import reference_loop
from kslm.nn import Backbone
from kslm.nn.nbce import BackboneLM, entropy, left_pad, nbce_generate, nbce_scores, top_p_filter

NEG = float("-inf")
pytestmark = pytest.mark.usefixtures("single_thread")  # one intra-op thread, as for the other small-model tests


# ------------------------------------------------------------------------------------------------ the step
def formula(rows, beta, eta, prev_k, top_p):
    """The reference step in plain Python floats (float64), row by row, from probabilities."""
    logps = []
    for r in rows:
        z = math.log(sum(math.exp(x) for x in r))
        lp = [x - z for x in r]
        order = sorted(range(len(lp)), key=lambda i: lp[i])  # ascending, as TopPLogitsWarper
        cum, keep = 0.0, set(range(len(lp)))
        for i in order[:-1]:
            cum += math.exp(lp[i])
            if cum <= 1 - top_p:
                keep.discard(i)
        logps.append([lp[i] if i in keep else NEG for i in range(len(lp))])
    H = [-sum(math.exp(x) * min(max(x, -100), 0) for x in lp) for lp in logps]
    if prev_k is not None:
        H[prev_k] -= eta
    k = min(range(1, len(rows)), key=lambda i: H[i])
    out = []
    for a, b in zip(logps[k], logps[0], strict=True):
        out.append(a if b <= -100 else (1 + beta) * a - beta * b)
    return out, k


def test_merge_equals_formula_with_guards():
    # row 0 puts almost no mass on token 3 (cut by top-p → −inf: the guard must keep logp_k, not +inf);
    # row 1 is the sharpest, row 2 a bit flatter; token 4 is cut in row 1 only (−inf stays −inf)
    rows = [[2.0, 1.5, 1.0, -9.0, 0.5], [4.0, 0.1, 0.0, 2.5, -8.0], [3.0, 0.5, 0.2, 2.0, 1.0]]
    logits = torch.tensor(rows, dtype=torch.float64)
    for beta, prev in [(0.25, None), (0.25, 2), (1.0, None), (0.0, 1)]:
        scores, k = nbce_scores(logits, beta=beta, eta=0.1, top_p=0.95, prev_k=prev)
        want, want_k = formula(rows, beta, 0.1, prev, 0.95)
        assert k == want_k
        assert torch.isinf(scores[4]) and scores[4] < 0
        assert not torch.isnan(scores).any() and not (scores == float("inf")).any()
        torch.testing.assert_close(scores, torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=1e-6)
    assert formula(rows, 0.25, 0.1, None, 0.95)[1] == 1
    # the η bonus: the previous choice wins when its entropy is within η of the best
    H = entropy(top_p_filter(torch.log_softmax(logits.float(), -1), 0.95))
    gap = float(H[2] - H[1])
    assert gap > 0.1
    assert nbce_scores(logits, eta=gap + 0.05, prev_k=2)[1] == 2 and nbce_scores(logits, eta=gap - 0.05, prev_k=2)[1] == 1
    assert formula(rows, 0.25, gap + 0.05, 2, 0.95)[1] == 2


def test_row0_is_never_chosen_and_mean_pooling():
    logits = torch.tensor([[50.0, 0.0, 0.0], [1.0, 0.9, 0.8], [2.0, 0.1, 0.0]])  # row 0 has zero entropy
    scores, k = nbce_scores(logits)
    assert k == 2  # the sharper of the two context rows, never row 0
    mean, k0 = nbce_scores(logits, beta=0.0, top_p=1.0, pooling="mean")
    assert k0 == 0
    torch.testing.assert_close(mean, torch.log_softmax(logits[1:], -1).mean(0))


def test_top_p_matches_hugging_face():
    transformers = pytest.importorskip("transformers")
    logp = torch.log_softmax(torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3, -1)
    warper = transformers.TopPLogitsWarper(0.95)
    assert torch.equal(top_p_filter(logp, 0.95), warper(None, logp.clone()))


# ------------------------------------------------------------------------------------- kslm backbones
LM = {"vocab_size": 50, "d_model": 32, "qk_dim": 16, "max_length": 128, "tie_embeddings": False, "double": False}


def random_prompts(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 50, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("block,mask", [("transformer", "causal"), ("gau", "causal"), ("transformer", "prefix")])
def test_cached_loop_equals_naive_recompute_kslm(block, mask):
    lm = BackboneLM(tiny_backbone(block, mask, **LM))
    picked = set()
    for seed, lengths in enumerate([(5, 17, 9, 30), (12, 3, 25), (8, 8, 8, 8, 8, 40)]):
        prompts = random_prompts(seed, lengths)
        fast = nbce_generate(lm, prompts, [3], 12, temperature=0.0)
        slow = nbce_generate(lm, prompts, [3], 12, temperature=0.0, use_cache=False)
        assert fast == slow
        picked |= set(fast[1])
    assert len(picked) > 1 and 0 not in picked  # the choice moves between contexts and never lands on row 0


def greedy_alone(lm, prompt, n):
    """Plain greedy decoding of one prompt, recomputed from scratch each step, no padding, no NBCE."""
    ids = list(prompt)
    for _ in range(n):
        x = torch.tensor([ids])
        logits, _ = lm(x, torch.ones_like(x), None, len(prompt))
        ids.append(int(logits[0].argmax()))
    return ids[len(prompt):]


def test_one_context_with_beta_zero_is_plain_greedy():
    lm = BackboneLM(tiny_backbone(**LM))
    for seed in range(3):
        empty, ctx = random_prompts(seed, (7, 21))
        tokens, chosen = nbce_generate(lm, [empty, ctx], [], 10, beta=0.0, temperature=0.0)
        assert tokens == greedy_alone(lm, ctx, 10) and chosen == [1] * 10


@pytest.mark.parametrize("block", ["transformer", "gau"])
def test_left_padded_rows_match_rows_alone_through_the_cache(block):
    lm = BackboneLM(tiny_backbone(block, **LM))
    prompts = random_prompts(5, (4, 15, 9))
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        first, state = lm(ids, mask, None, ids.shape[1])
        nxt = torch.tensor([[7], [8], [9]])
        mask2 = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        second, _ = lm(nxt, mask2, state, ids.shape[1])
        for i, p in enumerate(prompts):
            alone = torch.tensor([p + [int(nxt[i])]])
            a1, _ = lm(alone[:, :-1], torch.ones_like(alone[:, :-1]), None, len(p))
            a2, _ = lm(alone, torch.ones_like(alone), None, len(p))
            torch.testing.assert_close(first[i], a1[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(second[i], a2[0], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------- the data
class CharPrompter:
    """One token per character; the template is context + '|' + question."""

    def encode_prompt(self, context, question):
        return [0] + [ord(c) for c in f"{context}|{question}"]

    def count_tokens(self, text):
        return len(text)


def test_split_context_on_boundaries_within_budget():
    from kslm.data.nbce import split_context

    text = "One. Two three.\n\nFour five six seven.\nEight.\n\n" + "x" * 25
    chunks = split_context(text, 12, len)
    assert all(0 < len(c) <= 12 for c in chunks)
    assert "".join(chunks).replace(" ", "") == text.replace("\n", "").replace(" ", "")  # nothing lost
    assert chunks[:2] == ["One.", "Two three."]  # sentence cuts once the paragraph does not fit
    assert split_context("a b\n\nc d", 100, len) == ["a b\n\nc d"]


def test_build_prompts_fits_window_and_reports_errors(tmp_path):
    from kslm.data.nbce import build_prompts, read_nbce
    from kslm.errors import DataError

    path = tmp_path / "in.jsonl"
    rows = [{"id": "s", "context": "alpha beta. gamma delta.\n\nepsilon zeta eta.", "question": "q?"},
            {"context": ["short", "y" * 40], "question": "q?"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recs = read_nbce(path)
    assert recs[1]["id"] == 2  # defaults to the line number
    item = build_prompts(recs[0], CharPrompter(), window=20, max_new_tokens=4, max_batch_tokens=10**6, path=path)
    assert len(item["chunks"]) > 1 and item["prompts"][0] == CharPrompter().encode_prompt("", "q?")
    assert all(len(p) + 4 <= 20 for p in item["prompts"])
    with pytest.raises(DataError, match=r"in.jsonl:2, field 'context\[1\]'"):
        build_prompts(recs[1], CharPrompter(), 20, 4, 10**6, path)
    with pytest.raises(DataError, match="max_batch_tokens"):
        build_prompts(recs[0], CharPrompter(), 20, 4, 50, path)
    path.write_text('{"id": 1, "context": ["a", 3], "question": "q"}\n')
    with pytest.raises(DataError, match=r"in.jsonl:1, field 'context\[1\]'"):
        read_nbce(path)


# -------------------------------------------------------------------------------- kslm predict (kslm LM)
def write_records(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


RECORDS = [
    {"id": "a", "context": ["The class statement defines a class.", "A generator is a function.", "Modules hold code."],
     "question": "What defines a class?"},
    {"id": "b", "context": "The import statement loads a module. " * 12 + "\n\nThe def statement defines a function. " * 6,
     "question": "What does import do?"},
    {"id": 3, "context": ["Only one context here."], "question": "How many?"},
]


def test_predict_with_kslm_checkpoint_matches_naive_loop(small_corpus, tmp_path, monkeypatch, capsys):
    from kslm.checkpoint import load_backbone
    from kslm.data.tokenizer import EOS_ID

    monkeypatch.chdir(tmp_path)
    assert run_cli(["fit", *tiny_args(small_corpus, tmp_path, "--model.backbone.max_length", "160", steps=3)], capsys)[0] == 0
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    src, out = write_records(tmp_path / "in.jsonl", RECORDS), tmp_path / "out.jsonl"
    code, err = run_cli(["predict", "--config", str(REPO / "configs/nbce/kslm-lm.yaml"), "--model.checkpoint", str(ckpt),
                         "--data.predict_file", str(src), "--predictions.path", str(out), "--data.window", "64",
                         "--model.max_new_tokens", "6"], capsys)
    assert code == 0, err
    got = read_jsonl(out)
    assert [r["id"] for r in got] == ["a", "b", 3]
    assert [r["n_contexts"] for r in got][::2] == [3, 1] and got[1]["n_contexts"] > 2  # the string was split

    cfg, state, tok = load_backbone(ckpt)  # independent rebuild; naive recompute loop
    m = Backbone(cfg).eval()
    m.load_state_dict(state)
    for rec, res in zip(RECORDS, got, strict=True):
        chunks = rec["context"] if isinstance(rec["context"], list) else None
        if chunks is None:
            continue
        text = "{}\n{}"  # configs/nbce/kslm-lm.yaml's completion template
        prompts = [[EOS_ID] + tok.encode(text.format(c, rec["question"])).ids for c in ["", *chunks]]
        tokens, chosen = nbce_generate(BackboneLM(m), prompts, [EOS_ID], 6, temperature=0.0, use_cache=False)
        assert res["answer_token_ids"] == tokens and res["chosen_contexts"] == [k - 1 for k in chosen]
        assert res["answer"] == tok.decode(tokens)

    bad = write_records(tmp_path / "bad.jsonl", [{"id": 1, "context": ["x" * 400], "question": "q"}])
    code, err = run_cli(["predict", "--config", str(REPO / "configs/nbce/kslm-lm.yaml"), "--model.checkpoint", str(ckpt),
                         "--data.predict_file", str(bad), "--data.window", "64"], capsys)
    assert code == 2 and "bad.jsonl:1, field 'context[0]'" in err and "window 64" in err



def test_an_empty_answer_says_why(ckpts, tmp_path, monkeypatch, capsys):
    """An answer whose first token is end-of-text gets a "note" in its record and one stderr line; the others none.
    (Which records end at once is forced: the first record's decode returns no token, as after an EOS.)"""
    import kslm.tasks.nbce as task

    real = task.nbce_generate
    calls = []

    def first_ends_at_once(*args, **kwargs):
        calls.append(1)
        return ([], []) if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(task, "nbce_generate", first_ends_at_once)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("mine: 1\n", encoding="utf-8")  # a user's own file where kslm runs
    src, out = write_records(tmp_path / "in.jsonl", RECORDS[:1] * 2), tmp_path / "out.jsonl"
    code, err = run_cli(["predict", "--config", str(REPO / "configs/nbce/kslm-lm.yaml"), "--model.checkpoint",
                         str(ckpts["lm"]), "--data.predict_file", str(src), "--predictions.path", str(out),
                         "--model.max_new_tokens", "3"], capsys)
    assert code == 0, err
    got = read_jsonl(out)
    assert got[0]["answer"] == "" and got[0]["note"] == task.EMPTY_NOTE
    assert got[1]["answer_token_ids"] and "note" not in got[1]
    notes = [line for line in err.splitlines() if line.startswith("kslm: note:")]
    assert len(notes) == 1 and "1 empty answer(s) (lines 1)" in notes[0]
    # a run without a logger saves no config: Lightning's would have replaced the user's config.yaml
    assert (tmp_path / "config.yaml").read_text(encoding="utf-8") == "mine: 1\n"

# --------------------------------------------------------------------------------- Hugging Face Llama
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, small_corpus):
    transformers = pytest.importorskip("transformers")
    from tokenizers.processors import TemplateProcessing

    from kslm.data.tokenizer import train_tokenizer

    tok = train_tokenizer([small_corpus.read_text()[:20000]], kind="char", vocab_size=200)
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                                   initializer_range=0.2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path, model, fast


def reference_answer(model, tokenizer, contexts, question, max_tokens, beta=0.25, eta=0.1):
    """The reference loop on the reference's own prompts: HF tokenizer, left padding, row 0 without context."""
    tokenizer.padding_side = "left"
    batch = ["User: %s\n\n%s\n\nAssistant:" % (c, question) for c in [""] + contexts]
    inputs = tokenizer(batch, padding="longest", return_tensors="pt")
    return reference_loop(model, inputs.input_ids, inputs.attention_mask, max_tokens, tokenizer.eos_token_id, beta, eta)


def test_hf_cached_loop_padding_and_greedy(tiny_llama):
    from kslm.nn.nbce import HFCausalLM

    _, model, tokenizer = tiny_llama
    lm = HFCausalLM(model)
    picked = set()
    for rec in RECORDS[:1] + RECORDS[2:]:
        prompts = [tokenizer("User: %s\n\n%s\n\nAssistant:" % (c, rec["question"])).input_ids for c in ["", *rec["context"]]]
        fast = nbce_generate(lm, prompts, [3], 10, temperature=0.0)
        assert fast == nbce_generate(lm, prompts, [3], 10, temperature=0.0, use_cache=False)
        picked |= set(fast[1])
        if len(prompts) == 2:  # one context, β = 0: plain greedy, as HF's own generate does it
            tokens, _ = nbce_generate(lm, prompts, [], 8, beta=0.0, temperature=0.0)
            ref = model.generate(torch.tensor([prompts[1]]), max_new_tokens=8, do_sample=False, eos_token_id=None)
            assert tokens == ref[0, len(prompts[1]):].tolist()
    assert 0 not in picked
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        padded, _ = lm(ids, mask, None, ids.shape[1])
        alone, _ = lm(torch.tensor([prompts[0]]), torch.ones(1, len(prompts[0]), dtype=torch.long), None, len(prompts[0]))
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)


def test_hf_cache_argument_follows_the_forward_signature():
    """transformers 5.x takes and returns the cache as `cache` (`past_key_values` deprecated, removed in 5.40);
    4.x (≥ 4.56, what pyproject allows) as `past_key_values`: HFCausalLM uses the name the forward declares."""
    import inspect
    from types import SimpleNamespace

    from kslm.nn.nbce import HFCausalLM

    class Out(dict):  # a ModelOutput stand-in: fields as keys, only those set
        logits = torch.zeros(2, 1, 7)

    class Fake:
        config = SimpleNamespace(max_position_embeddings=64)

        def __init__(self, name):
            self.name, self.seen = name, {}
            P = inspect.Parameter
            self.forward = lambda **kw: None
            self.forward.__signature__ = inspect.Signature(
                [P(p, P.KEYWORD_ONLY, default=None) for p in
                 ("input_ids", "attention_mask", "position_ids", name, "use_cache", "logits_to_keep")])

        def __call__(self, use_cache=None, **kw):
            self.seen = {k: v for k, v in kw.items() if k in ("cache", "past_key_values")}
            return Out({self.name: "next-state"} if use_cache else {})

    ids, mask = left_pad([[5, 6], [7]])
    for name in ("cache", "past_key_values"):
        lm = HFCausalLM(Fake(name))
        _, state = lm(ids[:, -1:], mask, "old-state", ids.shape[1])
        assert lm.cache_arg == name and lm.model.seen == {name: "old-state"} and state == "next-state"
        _, state = lm(ids, mask, None, ids.shape[1] + 1)  # no cache asked for (the naive loop's later steps)
        assert lm.model.seen == {name: None} and state is None


def test_predict_hf_llama_matches_reference_loop(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # logs/ and the saved config land here
    path, model, tokenizer = tiny_llama
    src = write_records(tmp_path / "in.jsonl", [r for r in RECORDS if isinstance(r["context"], list)]
                        + [{"id": "c", "context": ["Paris is in France.", "Rome is in Italy.", "Bern is in Switzerland.",
                                                   "Oslo is in Norway."], "question": "Where is Rome?"}])
    out = tmp_path / "out.jsonl"
    code, err = run_cli(["predict", "--config", str(REPO / "configs/nbce/hf-llama.yaml"), "--model.hf_path", str(path),
                         "--data.predict_file", str(src), "--predictions.path", str(out), "--model.temperature", "0",
                         "--model.max_new_tokens", "12"], capsys)
    assert code == 0, err
    got = read_jsonl(out)
    assert len(got) == 3
    for rec, res in zip(read_jsonl(src), got, strict=True):
        assert res["id"] == rec["id"] and res["n_contexts"] == len(rec["context"])
        assert res["answer_token_ids"] == reference_answer(model, tokenizer, rec["context"], rec["question"], 12)
        assert len(res["chosen_contexts"]) == len(res["answer_token_ids"])
        assert all(0 <= c < res["n_contexts"] for c in res["chosen_contexts"])




def test_hub_id_offline_is_one_line(tmp_path, monkeypatch, capsys):
    """--model.hf_path with a hub id that the hub cache lacks, offline: one line naming the option, exit 2."""
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    src = write_records(tmp_path / "in.jsonl", RECORDS[:1])
    code, err = run_cli(["predict", "--config", str(REPO / "configs/nbce/hf-llama.yaml"), "--model.hf_path",
                         "kslm-test/no-such-llama", "--data.predict_file", str(src)], capsys)
    lines = [line for line in err.splitlines() if line.startswith("kslm: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "model.hf_path kslm-test/no-such-llama" in lines[0] and "(offline)" in lines[0], lines[0]
