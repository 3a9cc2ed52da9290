"""The one inference core: a trained model ready to answer records, behind `kslm predict`, `kslm.load` and `kslm serve`.

    import kslm
    m = kslm.load("checkpoints/cluener-egp/last.ckpt")      # a checkpoint, a `kslm export` directory or an NBCE config
    m.predict("张三在北京")          # → {"line": 1, "text": "张三在北京", "entities": [{"start": 0, "end": 2, …}]}
    m.predict(["…", "…"])           # → a list of records, in order
    m.task, m.labels, m.window
    for event in kslm.load("checkpoints/gau/last.ckpt").stream("def main("):   # a language model, as it generates
        print(event.get("delta", ""), end="")                                  # {"delta": text} …, then the record

Records go through the same steps `kslm predict` takes for a file: the data module's checks and encoding
(`records_from` → `prediction_items`), its prediction loader (windows, batching), the task's `predict_step` (decoding)
— one decode path per task, so the three give identical records. A bad record is a kslm error naming "record N"
(0-based, as in a JSON array) and the field, raised (a KslmError subclass), not printed.
"""

import hashlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import torch

from kslm.checkpoint import DATA_MODULES, TASKS, Checkpoint, is_sharded, open_checkpoint
from kslm.errors import CheckpointError, ConfigError

SHORT = {"LanguageModel": "lm", "EntityExtraction": "ner", "RelationExtraction": "re", "NBCE": "nbce"}
RESULT_KEY = {"lm": "generation", "ner": "entities", "re": "triples", "nbce": "answer"}


def _import(class_path: str):
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def sha256(path) -> Optional[str]:
    """The file's SHA-256 (a folder: its files' in name order), for /info and logs."""
    p = Path(str(path))
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


class Model:
    """A trained kslm model and the data module that turns records into its batches (see the module docstring)."""

    def __init__(self, task, data, source, device: Union[str, torch.device] = "cpu"):
        self.module, self.data, self.source = task, data, str(source)
        self.device = torch.device(device)
        self.module.to(self.device).eval()
        self.task = SHORT.get(type(task).__name__, type(task).__name__)
        self._sha = None
        self.module.on_predict_start()  # the task's own checks (an LM that cannot generate is refused here)

    # ------------------------------------------------------------------ facts
    @property
    def labels(self) -> Optional[List[str]]:
        """Entity types (NER) or predicates (RE); None for language models and NBCE."""
        labels = getattr(self.module, "labels", None)
        return list(labels) if labels else None

    @property
    def window(self) -> Optional[int]:
        """Tokens per window (extraction: data.max_length; LM: the backbone's max_length; NBCE: its window)."""
        if hasattr(self.data, "window_length"):
            return self.data.window_length() if self.task != "lm" else self.module.backbone_config.max_length
        return getattr(self.data, "window", None) or getattr(self.module, "window", None)

    @property
    def checkpoint_sha256(self) -> Optional[str]:
        if self._sha is None:
            self._sha = sha256(self.source)
        return self._sha

    def info(self) -> Dict[str, Any]:
        from kslm._version import __version__

        return {"task": self.task, "labels": self.labels, "window": self.window, "source": self.source,
                "checkpoint_sha256": self.checkpoint_sha256, "kslm_version": __version__,
                "batch_size": getattr(self.data, "batch_size", 1)}

    # ---------------------------------------------------------------- predict
    def predict(self, inputs):
        """One input (a text, or a record dict) → its record; a list → the list of records, in order."""
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        out = self.predict_records(items)
        return out[0] if single else out

    @torch.inference_mode()
    def predict_records(self, inputs: List) -> List[dict]:
        if not inputs:
            return []
        data, task = self.data, self.module
        task.on_predict_start()  # (resets what a run reports at its end: cut prompts, empty answers)
        items = data.prediction_items(data.records_from(inputs), None)
        out: List[dict] = []
        for index, batch in enumerate(data.prediction_loader(items)):
            result = task.predict_step(self._to_device(batch), index)
            out.extend(result if isinstance(result, list) else [result])
        return out

    def stream(self, prompt) -> Iterator[dict]:
        """A language model's answer to one prompt (a text, or a record {"prompt": …}) as it is generated:
        {"delta": text} each time the generation's text grows, then the record `predict` returns (the deltas join to
        its "generation"). What `kslm serve --stream` sends, one JSON object per line."""
        if self.task != "lm":
            raise ConfigError(f"streaming is for language models; this is a {self.task} model (use predict)")
        if not isinstance(prompt, (str, dict)):
            raise ConfigError(f"stream takes one prompt (a text or a record), got {type(prompt).__name__}")
        return self._stream(prompt)

    def _stream(self, prompt) -> Iterator[dict]:
        data, task = self.data, self.module
        with torch.inference_mode():
            task.on_predict_start()
            items = data.prediction_items(data.records_from([prompt]), None)
            (batch,) = list(data.prediction_loader(items))
        events = task.predict_stream(self._to_device(batch), 0)
        while True:  # each step under inference mode, as predict runs; the mode does not leak across the yields
            with torch.inference_mode():
                event = next(events, None)
            if event is None:
                return
            yield event

    def _to_device(self, batch):
        if self.device.type == "cpu":
            return batch
        if isinstance(batch, dict):
            return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return batch

    def __repr__(self) -> str:
        labels = f", {len(self.labels)} labels" if self.labels else ""
        return f"kslm.Model({self.task} from {self.source}{labels}, window {self.window}, {self.device})"


# ------------------------------------------------------------------------------------------------ loading


def load(path, device: Union[str, torch.device] = "cpu", **options) -> Model:
    """A model from a kslm checkpoint (`.ckpt`), a `kslm export` directory, or an NBCE config (`.yaml`).

    device: "cpu" (the default), "cuda", "cuda:1", …
    options: the task's run-time options, e.g. max_new_tokens=32, temperature=0.7 for an LM; an NBCE config takes
        its model options (beta, top_p, …) and data options (window, max_batch_tokens) by name.
    """
    p = Path(str(path))
    if p.suffix in (".yaml", ".yml"):
        return _from_nbce_config(p, device, options)
    if p.is_dir() and (p / "kslm.json").is_file():
        return _from_export(p, device, options)
    if is_sharded(p):
        raise CheckpointError(f"{p}: a sharded checkpoint (folder): kslm.load takes its consolidated file (kslm fit "
                              f"writes one beside it; `kslm consolidate {p}` makes one)")
    if p.is_dir():
        raise CheckpointError(f"{p}: a folder that is not a kslm export (no kslm.json); give a checkpoint file, an "
                              "export directory or an NBCE config")
    ckpt = open_checkpoint(p)
    payload = ckpt.payload
    task_cls = _import(TASKS[payload.task])
    task = task_cls.load_from_checkpoint(p, **options)
    return Model(task, _data_for(payload, task), p, device)


def _data_for(payload, task):
    """The data module a checkpoint predicts with (its recorded settings), connected to the task's tokenizer and
    labels as `kslm predict` connects them."""
    data = _import(DATA_MODULES[payload.task])(**payload.data)
    data.connect(task.tokenizer, payload.labels)
    return data


def _from_export(folder: Path, device, options) -> Model:
    from kslm.hf.reader import read_export

    payload, state, head = read_export(folder, "path")
    task_cls = _import(TASKS[payload.task])
    task_cls.check_runtime_options(options)
    prefix = "backbone.model." if payload.hf_config is not None else "backbone."
    stored = {**{prefix + k: v for k, v in state.items()}, **{f"head_module.{k}": v for k, v in (head or {}).items()}}
    task_cls.check_checkpoint(Checkpoint(folder, False, {"state_dict": stored}, payload))  # shapes first, on meta
    task = task_cls(**task_cls.init_args(payload.settings or {"backbone": payload.backbone}), **options)
    task.connect(payload.load_tokenizer(), payload.labels, payload, payload.data)
    task.build_from_payload(payload)
    target = task.backbone.model if payload.hf_config is not None else task.backbone
    try:
        target.load_state_dict(state)
        if getattr(task, "head_module", None) is not None:
            if not head:
                raise CheckpointError(f"{folder}: the export holds no weights for its {payload.task} head")
            task.head_module.load_state_dict(head)
    except (RuntimeError, KeyError) as exc:  # (shapes or names that are not the model's)
        raise CheckpointError(f"{folder}: the export's weights do not fit its kslm.json "
                              f"({str(exc).splitlines()[0][:200]})") from None
    return Model(task, _data_for(payload, task), folder, device)


def _from_nbce_config(path: Path, device, options) -> Model:
    """An NBCE config (configs/nbce/*.yaml: code, as every config): its model and data sections, options applied."""
    import yaml

    from kslm.data.nbce import NBCEDataModule
    from kslm.tasks.nbce import NBCE

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({str(exc).splitlines()[0][:200]})") from None
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    if not str(model.get("class_path", "")).endswith("NBCE"):
        raise ConfigError(f"{path}: kslm.load takes an NBCE config (model.class_path kslm.tasks.nbce.NBCE); for other "
                          "tasks give the trained checkpoint or its export")
    model_args, data_args = dict(model.get("init_args") or {}), dict(data.get("init_args") or {})
    data_args.pop("predict_file", None)
    for key, value in options.items():
        if key in ("window", "max_batch_tokens"):
            data_args[key] = value
        else:
            model_args[key] = value
    task = NBCE(**model_args)
    dm = NBCEDataModule(**data_args)
    dm.connect(task)
    return Model(task, dm, path, device)


__all__ = ["Model", "load", "sha256", "RESULT_KEY"]
