"""NBCE input: JSONL records `{"id", "context": str | [str], "question": str}` → one prompt per context chunk.

A list context is taken as the chunks. A string is split into chunks that fit the window beside the template, the
question and the answer: on paragraph boundaries first, then lines, sentences, words, and characters only for a
run of text with no boundary at all (linear in the text: see split_context). Each record becomes [no-context
prompt] + [one prompt per chunk] (token ids, built by the model: its tokenizer and template). A record whose batch
would exceed `max_batch_tokens` (rows × (longest prompt + new tokens), the KV cache's size) is an error naming its
line, never a crash; a context, chunk or question that cannot fit is refused before it is wholly tokenized.
"""

import re
from collections import deque
from itertools import accumulate
from pathlib import Path
from typing import Callable, List, Optional

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from kslm.data.formats.jsonl import iter_jsonl
from kslm.errors import ConfigError, DataError

# boundaries from coarse to fine; each pattern splits *after* the boundary, so pieces concatenate to the text
BOUNDARIES = [r"(?<=\n\n)", r"(?<=\n)", r"(?<=[.!?;。！？；])", r"(?<= )"]


def _longest_prefix(text: str, start: int, budget: int, count: Callable[[str], int]) -> int:
    """End of the longest run text[start:end] with at most `budget` tokens (at least one character). Galloping, then
    bisection: the counts cost O(length of the answer · log), not O(length of the text), per call."""
    n = len(text) - start
    lo, hi = 1, max(1, min(budget, n))
    while hi < n and count(text[start:start + hi]) <= budget:  # grow until over budget (or the end)
        lo, hi = hi, min(2 * hi, n)
    if hi == n and count(text[start:]) <= budget:
        return len(text)
    while lo < hi:  # count(text[start:start+lo]) <= budget < count(text[start:start+hi]) (lo = 1: at least a char)
        mid = (lo + hi + 1) // 2
        if mid == hi:
            break
        if count(text[start:start + mid]) <= budget:
            lo = mid
        else:
            hi = mid
    return start + lo


def split_context(text: str, budget: int, count: Callable[[str], int], level: int = 0,
                  known: Optional[int] = None) -> List[str]:
    """Greedy packing of `text` into chunks of at most `budget` tokens (by `count`), cutting at the coarsest
    boundary that works. Whitespace at the chunks' ends is dropped; empty chunks are never returned.

    Each chunk is the longest run of pieces (at this level's boundary) that fits, found by galloping and bisection
    over the number of pieces: O(log k) counts of chunk-sized strings per chunk of k pieces, not one count per piece
    of an ever longer string. A piece too long for its level is split at the next one (`known`: count(text), when
    the caller has it); a run with no boundary at all is cut by characters the same way."""
    if budget < 1:
        raise ValueError("no room for any context")
    total = count(text) if known is None else known
    if total <= budget:
        return [text.strip()] if text.strip() else []
    if level == len(BOUNDARIES):  # no boundary left: cut by characters
        chunks, start = [], 0
        while start < len(text):
            end = _longest_prefix(text, start, budget, count)
            chunks.append(text[start:end])
            start = end
        return [c.strip() for c in chunks if c.strip()]
    pieces = [piece for piece in re.split(BOUNDARIES[level], text) if piece]
    if len(pieces) == 1:
        return split_context(text, budget, count, level + 1, known=total)
    ends = list(accumulate(len(piece) for piece in pieces))  # pieces concatenate to text

    def fits(i, j):  # pieces i..j (inclusive) together
        return count(text[ends[i] - len(pieces[i]):ends[j]]) <= budget

    chunks, i = [], 0
    while i < len(pieces):
        n = count(pieces[i])
        if n > budget:
            chunks.extend(split_context(pieces[i], budget, count, level + 1, known=n))
            i += 1
            continue
        lo, hi, step = i, len(pieces), 1  # pieces i..lo fit; i..hi do not (hi = len: not known)
        while lo + step < len(pieces):
            if not fits(i, lo + step):
                hi = lo + step
                break
            lo, step = lo + step, 2 * step
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(i, mid):
                lo = mid
            else:
                hi = mid
        chunks.append(text[ends[i] - len(pieces[i]):ends[lo]])
        i = lo + 1
    return [c.strip() for c in chunks if c.strip()]


def exceeds(text: str, limit: int, count: Callable[[str], int], slice_chars: int = 1 << 15) -> bool:
    """Whether `text` surely has more than `limit` tokens, counting slice by slice and stopping as soon as it is
    sure (a 10 MB context is refused after counting about `limit` tokens' worth of it, not all of it). A cut can
    merge or split a token at each seam, so each seam is allowed 2 tokens of slack."""
    total, seams = 0, -1
    for a in range(0, len(text), slice_chars):
        total += count(text[a:a + slice_chars])
        seams += 1
        if total - 2 * seams > limit:
            return True
    return False


def read_nbce(path) -> List[dict]:
    """Validated records: {"line", "id", "context": str | [str], "question"}; `id` defaults to the line number."""
    return [nbce_record(rec, path, line, line) for line, rec in iter_jsonl(path)]


def nbce_record(rec, path, where, line: int) -> dict:
    """One validated record {"line", "id", "context", "question"} (`where`: the line or "record N" errors name)."""
    if not isinstance(rec, dict):
        raise DataError(f"expected a JSON object, got {type(rec).__name__}", path=path, line=where)
    ctx, q = rec.get("context"), rec.get("question")
    if not isinstance(q, str):
        raise DataError("record needs a string 'question'", path=path, line=where, field="question")
    if isinstance(ctx, str):
        if not ctx.strip():
            raise DataError("context is empty", path=path, line=where, field="context")
    elif isinstance(ctx, list) and ctx:
        for i, c in enumerate(ctx):
            if not isinstance(c, str) or not c.strip():
                raise DataError("every context chunk must be a non-empty string", path=path, line=where, field=f"context[{i}]")
    else:
        raise DataError("'context' must be a non-empty string or list of strings", path=path, line=where, field="context")
    return {"line": line, "id": rec.get("id", line), "context": ctx, "question": q}


def build_prompts(rec: dict, prompter, window: int, max_new_tokens: int, max_batch_tokens: int, path=None) -> dict:
    """A record → {"line", "id", "chunks", "prompts"}: prompts[0] has the empty context, prompts[k] chunk k − 1.
    `prompter` gives encode_prompt(context, question) → ids and count_tokens(text) → int."""
    q, line = rec["question"], rec["line"]
    room = window - max_new_tokens  # every prompt + the answer must fit the window

    def too_long(where, n):
        return DataError(f"{where} needs {n} + {max_new_tokens} new tokens > window {window}", path=path, line=line,
                         field=where)

    if exceeds(q, room + 2, prompter.count_tokens):  # (2: tokens a seam with the template may merge)
        raise too_long("question", f"more than {room}")
    empty = prompter.encode_prompt("", q)
    if len(empty) > room:
        raise too_long("question", len(empty))
    if isinstance(rec["context"], list):
        chunks, prompts = rec["context"], []
        for i, c in enumerate(chunks):
            if exceeds(c, room + 2, prompter.count_tokens):
                raise too_long(f"context[{i}]", f"more than {room}")
            prompts.append(prompter.encode_prompt(c, q))
            if len(prompts[-1]) > room:
                raise too_long(f"context[{i}]", len(prompts[-1]))
    else:
        # every context token is in some row (whitespace runs apart: chunk ends are stripped): a context with more
        # tokens than max_batch_tokens can never fit, and is refused before it is split (or even wholly tokenized)
        if exceeds(re.sub(r"\s+", " ", rec["context"]), max_batch_tokens, prompter.count_tokens):
            raise DataError(f"the context has more than data.max_batch_tokens {max_batch_tokens} tokens (every one is "
                            "in some row of the batch); shorten the context or raise the limit", path=path, line=line,
                            field="context")
        chunks, prompts = [], []
        # the chunk's own token count is a close estimate of what it adds to the prompt; a chunk whose prompt still
        # overflows (tokens merging across the template's seams) is split again with a smaller budget
        todo = deque(split_context(rec["context"], room - len(empty), prompter.count_tokens))
        while todo:
            chunk = todo.popleft()
            p = prompter.encode_prompt(chunk, q)
            if len(p) <= room:
                chunks.append(chunk)
                prompts.append(p)
                continue
            budget = prompter.count_tokens(chunk) - (len(p) - room)
            if budget < 1:
                raise too_long("context", len(p))
            todo.extendleft(reversed(split_context(chunk, budget, prompter.count_tokens)))
    longest = max(len(p) for p in [empty, *prompts])
    cost = (len(prompts) + 1) * (longest + max_new_tokens)
    if cost > max_batch_tokens:
        raise DataError(f"{len(prompts)} contexts × {longest + max_new_tokens} tokens (+ the no-context row) = {cost} "
                        f"tokens > data.max_batch_tokens {max_batch_tokens}; shorten the context or raise the limit",
                        path=path, line=line, field="context")
    return {"line": line, "id": rec["id"], "chunks": chunks, "prompts": [empty, *prompts]}


class NBCEDataModule(pl.LightningDataModule):
    """Records for `kslm predict` with the NBCE model (kslm.tasks.nbce.NBCE). The CLI connects the model's prompter
    (its tokenizer and template: encode_prompt, count_tokens, window, max_new_tokens) before anything is read.

    Args:
        predict_file: JSONL of {"id", "context": str | [str], "question": str}.
        window: tokens per prompt (context chunk + template + question + answer); empty = the model's window.
        max_batch_tokens: per record, rows × (longest prompt + new tokens) allowed (≈ the KV cache's size in
            tokens); a bigger record is reported as an error before anything runs.
    """

    def __init__(self, predict_file: Optional[str] = None, window: Optional[int] = None, max_batch_tokens: int = 262144):
        super().__init__()
        if predict_file and not Path(predict_file).is_file():
            raise DataError("input file not found", path=predict_file, field="data.predict_file")
        if window is not None and window <= 0:
            raise ConfigError(f"data.window must be positive, got {window}")
        if max_batch_tokens < 1:
            raise ConfigError(f"data.max_batch_tokens must be positive, got {max_batch_tokens}")
        self.predict_file, self.window, self.max_batch_tokens = predict_file, window, max_batch_tokens
        self.items: Optional[List[dict]] = None
        self.prompter = None

    def connect(self, prompter) -> None:
        """The model's prompter; its window bounds data.window (checked here, before any record is read)."""
        if not all(hasattr(prompter, a) for a in ("encode_prompt", "count_tokens", "window", "max_new_tokens")):
            raise ConfigError("the NBCE data module needs the NBCE model (model.class_path kslm.tasks.nbce.NBCE)")
        if (self.window or prompter.window) is None:
            raise ConfigError("the model does not state its window (no max_position_embeddings): set data.window")
        if prompter.window and self.window and self.window > prompter.window:
            raise ConfigError(f"data.window {self.window} exceeds the model's window {prompter.window}")
        self.prompter = prompter

    def setup(self, stage: Optional[str] = None):
        if stage != "predict":
            raise ConfigError("the NBCE data module only serves `kslm predict`")
        if not self.predict_file:
            raise DataError("kslm predict needs records: --data.predict_file FILE.jsonl", field="data.predict_file")
        if self.prompter is None:
            raise ConfigError("the NBCE data module is not connected to an NBCE model (kslm predict does that)")
        self.items = self.prediction_items(read_nbce(self.predict_file), self.predict_file)

    def predict_dataloader(self):
        return self.prediction_loader(self.items)

    # ------------------------------------------- prediction (kslm predict, kslm.load, kslm serve: one path)
    @staticmethod
    def records_from(inputs: List) -> List[dict]:
        """Records given in memory → validated records, "line" the 1-based position; errors name "record N"."""
        return [nbce_record(rec, None, f"record {i}", i + 1) for i, rec in enumerate(inputs)]

    def prediction_items(self, records: List[dict], source) -> List[dict]:
        """Records → their prompts (every context chunk checked against the window and data.max_batch_tokens)."""
        if self.prompter is None:
            raise ConfigError("the NBCE data module is not connected to an NBCE model (kslm predict does that)")
        p = self.prompter
        window = self.window or p.window
        return [{**build_prompts(r, p, window, p.max_new_tokens, self.max_batch_tokens, source),
                 "source": str(source) if source is not None else None} for r in records]

    @staticmethod
    def prediction_loader(items: List[dict]) -> DataLoader:
        return DataLoader(items, batch_size=1, collate_fn=lambda b: b[0])


__all__ = ["NBCEDataModule", "split_context", "exceeds", "read_nbce", "nbce_record", "build_prompts"]
