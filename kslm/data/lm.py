"""LMDataModule: text files / a folder / a hub dataset → tokenizer → packed fixed-length blocks.

Text is read with `datasets.load_dataset` ("text" builder, one sample per paragraph, for .txt; "json" for
.json/.jsonl with a `text_field`), tokenized with `Dataset.map(batched=True)` and packed into the token cache
(kslm.data.token_cache): documents joined with </s> and cut into blocks of seq_len + 1 tokens (inputs and shifted targets).
The train/val split of the blocks is deterministic (seeded). With no data given, the embedded corpus
(kslm.data.corpus) is used, so a fresh install trains without a download. `test_file` (files or folders, read like
data_files) is packed the same way into the blocks `kslm test` evaluates.
"""

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import List, Optional, Union

from torch.utils.data import DataLoader

from kslm.data.base import KslmDataModule, default_cache_dir, ignore_sigint
from kslm.data.corpus import embedded_corpus_path
from kslm.data.formats.jsonl import check_utf8_file, iter_jsonl, iter_lines, parse_json, read_text
from kslm.data.token_cache import cache_key, packed_blocks, split_blocks
from kslm.data.tokenizer import cached_tokenizer, check_vocab_size, tokenizer_from_source
from kslm.errors import DataError

log = logging.getLogger(__name__)
TEXT_SUFFIXES = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json"}


def resolve_files(data_files, field: str = "data.data_files") -> List[Path]:
    files = []
    for item in [data_files] if isinstance(data_files, (str, Path)) else list(data_files):
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in TEXT_SUFFIXES and f.is_file())
            if not found:
                raise DataError("folder holds no .txt/.json/.jsonl files", path=p, field=field)
            files.extend(found)
        elif p.is_file():
            if p.suffix not in TEXT_SUFFIXES:
                raise DataError(f"unsupported file type {p.suffix!r} (use .txt, .json or .jsonl)", path=p, field=field)
            files.append(p)
        else:
            raise DataError("data file not found", path=p, field=field)
    return files


class LMDataModule(KslmDataModule):
    """Language-model pretraining data.

    Args:
        data_files: text (.txt), JSON/JSONL files (JSON arrays too) or folders of them, mixed freely (each JSON file
            contributes its `text_field`); empty = the embedded default corpus.
        dataset: a Hugging Face hub dataset name (needs network), used instead of data_files.
        dataset_config: the hub dataset's configuration name.
        text_field: the field holding the text in JSON records and hub datasets.
        tokenizer: a tokenizer.json or kslm .ckpt to take the tokenizer from; empty = train one on the data (the
            tokenizer of `--ckpt_path` / `--model.pretrained` takes precedence: it travels with the weights).
        tokenizer_kind: bpe (byte-level BPE, CJK characters isolated) or char (one token per character).
        vocab_size: vocabulary size when training a tokenizer.
        seq_len: tokens per training sequence.
        batch_size: sequences per batch (per device).
        val_fraction: fraction of blocks held out for validation (at least one block).
        num_workers: DataLoader worker processes.
        seed: seed of the train/val split and of the shuffling.
        num_proc: processes that tokenize the corpus (the blocks do not depend on it); null = one below 32 MB of
            text, else min(CPU cores, 8). Blocks are kept in a cache under cache_dir/lm-blocks (kslm.data.token_cache)
            that later runs with the same corpus, tokenizer and seq_len reuse.
        tokenizer_sample_mb: at most this much text (MB, evenly spread over the corpus) trains the tokenizer.
        cache_dir: where trained tokenizers and the embedded corpus are kept (default $KSLM_CACHE or ~/.cache/kslm).
        predict_file: prompts for `kslm predict`: a .txt (one per line), a .jsonl with a "prompt" field per line or a
            .json array of such records (see read_prompts).
        test_file: held-out text for `kslm test`, given like data_files (files, folders or a list of them), packed
            into blocks of seq_len + 1 tokens like the training text (a last partial block is left out); empty =
            `kslm test` evaluates the validation blocks and says so.
    """

    def __init__(self, data_files: Optional[Union[str, List[str]]] = None, dataset: Optional[str] = None,
                 dataset_config: Optional[str] = None, text_field: str = "text", tokenizer: Optional[str] = None,
                 tokenizer_kind: str = "bpe", vocab_size: int = 8000, seq_len: int = 128, batch_size: int = 16,
                 val_fraction: float = 0.02, num_workers: int = 0, seed: int = 1234, cache_dir: Optional[str] = None,
                 predict_file: Optional[str] = None, num_proc: Optional[int] = None, tokenizer_sample_mb: float = 64.0,
                 test_file: Optional[Union[str, List[str]]] = None):
        super().__init__(cache_dir, batch_size, num_workers, seed)
        if tokenizer_kind not in ("bpe", "char"):
            raise DataError(f"unknown tokenizer kind {tokenizer_kind!r} (bpe | char)", field="data.tokenizer_kind")
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}", field="data.val_fraction")
        if seq_len < 1:
            raise DataError(f"seq_len must be positive, got {seq_len}", field="data.seq_len")
        check_vocab_size(tokenizer_kind, vocab_size)
        if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
            raise DataError(f"num_proc must be a positive number of processes (or null), got {num_proc!r}",
                            field="data.num_proc")
        if not (isinstance(tokenizer_sample_mb, (int, float)) and math.isfinite(tokenizer_sample_mb)
                and tokenizer_sample_mb > 0):
            raise DataError(f"tokenizer_sample_mb must be a positive number, got {tokenizer_sample_mb!r}",
                            field="data.tokenizer_sample_mb")
        self.num_proc, self.tokenizer_sample_mb = num_proc, float(tokenizer_sample_mb)
        self.files = resolve_files(data_files) if data_files else ([] if dataset else None)
        self.test_files = resolve_files(test_file, "data.test_file") if test_file else None
        if predict_file and not Path(predict_file).is_file():
            raise DataError("prompt file not found", path=predict_file, field="data.predict_file")
        self.dataset_name, self.dataset_config, self.text_field = dataset, dataset_config, text_field
        self.tokenizer_path, self.tokenizer_kind, self.vocab_size = tokenizer, tokenizer_kind, vocab_size
        self.seq_len, self.val_fraction, self.predict_file = seq_len, val_fraction, predict_file
        self.train_set = self.val_set = self.test_set = None

    # ---------------------------------------------------------------- loading
    def _raw(self, test: bool = False):
        """The training corpus, or (test) the text of data.test_file, as a datasets.Dataset."""
        field = "data.test_file" if test else "data.data_files"
        # Arrow's JSON reader takes bytes that are not UTF-8 and fails later, far from the file
        for f in (self.test_files if test else self.files) or []:
            check_utf8_file(f)
        from datasets import concatenate_datasets, load_dataset

        if self.dataset_name and not test:
            ds = load_dataset(self.dataset_name, self.dataset_config, split="train")
        else:
            files = self._files(test)
            # text files load together; each JSON file alone (datasets with different label schemas, e.g. CLUENER
            # and DuIE, cannot share one table), keeping only the text field; then one concatenated corpus
            texts = [f for f in files if TEXT_SUFFIXES[f.suffix] == "text"]
            parts = [(texts, "text", {"sample_by": "paragraph", "encoding": "utf-8-sig"})] if texts else []
            parts += [([f], "json", {}) for f in files if TEXT_SUFFIXES[f.suffix] == "json"]
            ds = concatenate_datasets([self._load_part(*part, field=field) for part in parts])
        if self.text_field not in ds.column_names:
            raise DataError(f"records have no '{self.text_field}' field (fields: {ds.column_names})",
                            path=((self.test_files if test else self.files) or [self.dataset_name])[0],
                            field="data.text_field")
        return ds

    def _files(self, test: bool = False) -> List[Path]:
        if test:
            return self.test_files
        return self.files if self.files is not None else [embedded_corpus_path(self.cache_dir)]

    def _load_part(self, files, builder, kwargs, field: str = "data.data_files"):
        from datasets import load_dataset

        try:
            ds = load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
        except Exception as exc:  # datasets wraps JSON errors in its own exception types
            raise DataError(f"cannot read ({str(exc).splitlines()[0][:200]})", path=files[0], field=field) from None
        if self.text_field not in ds.column_names:
            raise DataError(f"records have no '{self.text_field}' field (fields: {ds.column_names})",
                            path=files[0], field="data.text_field")
        ds = ds.select_columns([self.text_field])
        feature = ds.features[self.text_field]
        if builder == "json" and (getattr(feature, "dtype", None) not in ("string", "large_string") or
                                  ds.data.column(self.text_field).null_count):
            self._refuse_text(files[0])  # a record whose text is a number, a list, null or missing
        return ds

    def _refuse_text(self, path: Path) -> None:
        """The first JSON-lines record of `path` whose text field is not a string, as a one-line DataError (found by
        reading the file again: only when Arrow's column says one exists)."""
        for line, rec in iter_jsonl(path):
            value = rec.get(self.text_field)
            if not isinstance(value, str):
                raise DataError(f"the text must be a string, got {type(value).__name__ if value is not None else 'null'}",
                                path=path, line=line, field=self.text_field)
        raise DataError(f"the '{self.text_field}' values are not all strings", path=path, field=self.text_field)

    def _source_key(self, test: bool = False) -> str:
        if self.dataset_name and not test:
            src = [self.dataset_name, self.dataset_config]
        else:
            files = self._files(test)
            src = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        return hashlib.sha256(json.dumps([src, self.text_field]).encode()).hexdigest()[:16]

    def build_tokenizer(self):
        """data.tokenizer (a tokenizer.json), else one trained on the corpus and cached under cache_dir."""
        if self.tokenizer_path:
            return tokenizer_from_source(self.tokenizer_path)
        raw = None

        def texts():  # every step-th record, step = corpus size / sample size: a bounded, evenly spread sample
            nonlocal raw
            raw = raw if raw is not None else self._raw()
            cap = int(self.tokenizer_sample_mb * 1e6)
            step, taken = max(1, math.ceil(raw.data.nbytes / cap)), 0
            for i in range(0, len(raw), 1000 * step):
                for t in raw[i : i + 1000 * step : step][self.text_field]:
                    if t and taken < cap:
                        taken += len(t.encode("utf-8"))
                        yield t

        sample = "" if self.tokenizer_sample_mb == 64.0 else f"-s{self.tokenizer_sample_mb:g}"
        name = f"tokenizer-{self.tokenizer_kind}-{self.vocab_size}{sample}-{self._source_key()}.json"
        return cached_tokenizer(self.cache_dir / name, texts, self.tokenizer_kind, self.vocab_size)

    window_option = "data.seq_len"

    def window_length(self) -> int:
        return self.seq_len

    def predict_settings(self) -> dict:
        return {"seq_len": self.seq_len, "batch_size": self.batch_size}

    def _blocks(self, test: bool = False):
        """The training corpus (or, test, data.test_file) tokenized and packed into blocks of seq_len + 1 tokens, from
        the token cache (kslm.data.token_cache) when an earlier run made them."""
        tok, block = self.load_tokenizer(), self.seq_len + 1
        folder = self.cache_dir / "lm-blocks" / cache_key(f"{self._source_key(test)}", tok, block)
        blocks, _ = packed_blocks(lambda: self._raw(test), tok, self.text_field, block, folder, self.num_proc)
        if test and len(blocks) < 1:
            raise DataError(f"test text too small: not one block of {block} tokens (data.seq_len + 1)",
                            path=self.test_files[0], field="data.test_file")
        if not test and len(blocks) < 2:
            raise DataError(f"corpus too small: {len(blocks)} block(s) of {block} tokens; need at least 2",
                            path=(self.files or [self.dataset_name])[0], field="data.data_files")
        return blocks

    def _testing(self) -> bool:
        return self.trainer is not None and self.trainer.state.fn == "test"

    def prepare_data(self):
        if stage_needs_blocks(self.trainer):  # rank 0 fills the datasets caches; other ranks then read them
            test = self._testing() and self.test_files is not None
            self._prepared = (test, self._blocks(test=test))  # (setup takes them: one "LM data:" line, not two)

    def _packed(self, test: bool = False):
        """The blocks prepare_data made in this process, else `_blocks`."""
        prepared, self._prepared = getattr(self, "_prepared", None), None
        return prepared[1] if prepared is not None and prepared[0] == test else self._blocks(test=test)

    def setup(self, stage: Optional[str] = None):
        if stage == "predict":
            self.load_tokenizer()
            return
        if stage == "test" and self.test_files is not None:
            if self.test_set is None:
                self.test_set = self._packed(test=True)
                log.info("LM test data: %d blocks of %d tokens", len(self.test_set), self.seq_len)
            return
        if stage == "test":
            self.note("no --data.test_file: kslm test evaluates the validation blocks (the held-out "
                      f"data.val_fraction {self.val_fraction} of the corpus); its test/* numbers are kslm validate's val/*")
        if self.train_set is not None:
            return
        blocks = self._packed()
        n_val = max(1, round(len(blocks) * self.val_fraction))
        train, val = split_blocks(blocks, n_val, self.seed)
        if len(train) < self.batch_size:  # drop_last: not one training batch, nothing would be trained
            raise DataError(f"{len(train)} training blocks of {block_len(self)} tokens do not fill one batch of "
                            f"data.batch_size {self.batch_size}; lower data.batch_size or data.seq_len, or add text",
                            path=(self.files or [self.dataset_name or "the embedded corpus"])[0], field="data.batch_size")
        self.train_set, self.val_set = train, val
        log.info("LM data: %d train / %d val blocks of %d tokens", len(self.train_set), len(self.val_set), self.seq_len)

    # ------------------------------------------------------------ dataloaders
    def train_dataloader(self):
        return self.resumable_loader(self.train_set, drop_last=True)

    def val_dataloader(self):
        import torch

        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          generator=torch.Generator(), worker_init_fn=ignore_sigint if self.num_workers else None)

    def test_dataloader(self):
        import torch

        if self.test_set is None:
            return self.val_dataloader()
        return DataLoader(self.test_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          generator=torch.Generator())

    def predict_dataloader(self):
        if not self.predict_file:
            raise DataError("kslm predict needs prompts: --data.predict_file FILE (.txt lines or .jsonl with 'prompt')",
                            field="data.predict_file")
        return self.prediction_loader(read_prompts(self.predict_file))

    # ------------------------------------------- prediction (kslm predict, kslm.load, kslm serve: one path)
    @staticmethod
    def records_from(inputs: List) -> List[dict]:
        """Prompts given in memory: each a string or {"prompt": …, other fields kept} → {"line", "prompt", …},
        "line" the 1-based position; a bad one is a DataError naming "record N" (0-based) and the field."""
        return [_prompt_record({"prompt": rec} if isinstance(rec, str) else rec, None, f"record {i}", i + 1)
                for i, rec in enumerate(inputs)]

    @staticmethod
    def prediction_items(records: List[dict], source=None) -> List[dict]:
        return records  # (a prompt is cut to the window by the task, which says how much it left out)

    @staticmethod
    def prediction_loader(items: List[dict]) -> DataLoader:
        return DataLoader(items, batch_size=1, collate_fn=lambda b: b[0])


def read_prompts(path) -> List[dict]:
    """Prompts for `kslm predict`, each {"line", "prompt", …}:

        .jsonl   one JSON object per line with a string "prompt" (other fields are kept in the output); "line" is
                 the line number
        .json    a JSON array of such objects (or of strings); "line" is the record's 1-based position
        other    plain text, one prompt per line (blank lines are not prompts); "line" is the line number
    """
    p = Path(path)
    if p.suffix.lower() == ".jsonl":
        prompts = []
        for line, rec in iter_jsonl(p):
            prompts.append(_prompt_record(rec, p, line, line))
        return prompts
    if p.suffix.lower() == ".json":
        return _json_prompts(p)
    return [{"line": n, "prompt": t} for n, t in ((n, line.rstrip("\r\n")) for n, line in iter_lines(p)) if t.strip()]


def _json_prompts(p: Path) -> List[dict]:
    data = parse_json(read_text(p), p)
    if not isinstance(data, list):
        raise DataError(f"a .json prompt file holds a JSON array of records {{\"prompt\": …}} (or of strings), got "
                        f"{type(data).__name__}", path=p)
    prompts = []
    for i, rec in enumerate(data):
        prompts.append(_prompt_record({"prompt": rec} if isinstance(rec, str) else rec, p, f"record {i}", i + 1))
    return prompts


def _prompt_record(rec, p: Path, where, line: int) -> dict:
    if not isinstance(rec, dict):
        raise DataError(f"expected a JSON object with a string 'prompt', got {type(rec).__name__}", path=p, line=where)
    if not isinstance(rec.get("prompt"), str):
        raise DataError("record needs a string 'prompt'", path=p, line=where, field="prompt")
    if "line" in rec:  # the output's "line" is the input position: a field of that name would be lost
        raise DataError("'line' is the field kslm writes (the record's position); rename it", path=p, line=where,
                        field="line")
    return {"line": line, **rec}


def block_len(data) -> int:
    return data.seq_len + 1


def stage_needs_blocks(trainer) -> bool:
    """prepare_data tokenizes the corpus only for the stages that read it (not predict)."""
    return trainer is None or trainer.state.fn != "predict"


__all__ = ["LMDataModule", "read_prompts", "default_cache_dir"]
