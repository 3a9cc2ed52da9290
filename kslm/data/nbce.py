"""NBCE input: JSONL records `{"id", "context": str | [str], "question": str}` → one prompt per context chunk.

A list context is taken as the chunks. A string is split into chunks that fit the window beside the template, the
question and the answer: on paragraph boundaries first, then lines, sentences, words, and characters only for a
run of text with no boundary at all. Each record becomes [no-context prompt] + [one prompt per chunk] (token ids,
built by the model: its tokenizer and template). A record whose batch would exceed `max_batch_tokens`
(rows × (longest prompt + new tokens), the KV cache's size) is an error naming its line, never a crash.
"""

import re
from pathlib import Path
from typing import Callable, List, Optional

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from kslm.data.formats.jsonl import iter_jsonl
from kslm.errors import ConfigError, DataError

# boundaries from coarse to fine; each pattern splits *after* the boundary, so pieces concatenate to the text
BOUNDARIES = [r"(?<=\n\n)", r"(?<=\n)", r"(?<=[.!?;。！？；])", r"(?<= )"]


def _longest_prefix(text: str, budget: int, count: Callable[[str], int]) -> int:
    """Length of the longest prefix of `text` with at most `budget` tokens (at least one character)."""
    lo, hi = 1, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def split_context(text: str, budget: int, count: Callable[[str], int], level: int = 0) -> List[str]:
    """Greedy packing of `text` into chunks of at most `budget` tokens (by `count`), cutting at the coarsest
    boundary that works. Whitespace at the chunks' ends is dropped; empty chunks are never returned."""
    if budget < 1:
        raise ValueError("no room for any context")
    if count(text) <= budget:
        return [text.strip()] if text.strip() else []
    if level == len(BOUNDARIES):  # no boundary left: cut by characters
        n = _longest_prefix(text, budget, count)
        return split_context(text[:n], budget, count, level) + split_context(text[n:], budget, count, level)
    chunks, current = [], ""
    for piece in re.split(BOUNDARIES[level], text):
        if not piece:
            continue
        if count(current + piece) <= budget:
            current += piece
            continue
        chunks.append(current)
        if count(piece) <= budget:
            current = piece
        else:
            chunks.extend(split_context(piece, budget, count, level + 1))
            current = ""
    chunks.append(current)
    return [c.strip() for c in chunks if c.strip()]


def read_nbce(path) -> List[dict]:
    """Validated records: {"line", "id", "context": str | [str], "question"}; `id` defaults to the line number."""
    records = []
    for line, rec in iter_jsonl(path):
        ctx, q = rec.get("context"), rec.get("question")
        if not isinstance(q, str):
            raise DataError("record needs a string 'question'", path=path, line=line, field="question")
        if isinstance(ctx, str):
            if not ctx.strip():
                raise DataError("context is empty", path=path, line=line, field="context")
        elif isinstance(ctx, list) and ctx:
            for i, c in enumerate(ctx):
                if not isinstance(c, str) or not c.strip():
                    raise DataError("every context chunk must be a non-empty string", path=path, line=line, field=f"context[{i}]")
        else:
            raise DataError("'context' must be a non-empty string or list of strings", path=path, line=line, field="context")
        records.append({"line": line, "id": rec.get("id", line), "context": ctx, "question": q})
    return records


def build_prompts(rec: dict, prompter, window: int, max_new_tokens: int, max_batch_tokens: int, path=None) -> dict:
    """A record → {"line", "id", "chunks", "prompts"}: prompts[0] has the empty context, prompts[k] chunk k − 1.
    `prompter` gives encode_prompt(context, question) → ids and count_tokens(text) → int."""
    q, line = rec["question"], rec["line"]
    empty = prompter.encode_prompt("", q)
    room = window - max_new_tokens  # every prompt + the answer must fit the window

    def too_long(where, n):
        return DataError(f"{where} needs {n} + {max_new_tokens} new tokens > window {window}", path=path, line=line,
                         field=where)

    if len(empty) > room:
        raise too_long("question", len(empty))
    if isinstance(rec["context"], list):
        chunks = rec["context"]
        prompts = [prompter.encode_prompt(c, q) for c in chunks]
        for i, p in enumerate(prompts):
            if len(p) > room:
                raise too_long(f"context[{i}]", len(p))
    else:
        chunks, prompts = [], []
        # the chunk's own token count is a close estimate of what it adds to the prompt; a chunk whose prompt still
        # overflows (tokens merging across the template's seams) is split again with a smaller budget
        todo = split_context(rec["context"], room - len(empty), prompter.count_tokens)
        while todo:
            chunk = todo.pop(0)
            p = prompter.encode_prompt(chunk, q)
            if len(p) <= room:
                chunks.append(chunk)
                prompts.append(p)
                continue
            budget = prompter.count_tokens(chunk) - (len(p) - room)
            if budget < 1:
                raise too_long("context", len(p))
            todo[:0] = split_context(chunk, budget, prompter.count_tokens)
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
        p = self.prompter
        window = self.window or p.window
        self.items = [{**build_prompts(r, p, window, p.max_new_tokens, self.max_batch_tokens, self.predict_file),
                       "source": str(self.predict_file)} for r in read_nbce(self.predict_file)]

    def predict_dataloader(self):
        return DataLoader(self.items, batch_size=1, collate_fn=lambda b: b[0])


__all__ = ["NBCEDataModule", "split_context", "read_nbce", "build_prompts"]
