"""An export directory back into kslm: `--model.pretrained DIR` (kslm.tasks.base), its tokenizer (kslm.cli.connect), NBCE's
`model.checkpoint DIR`, and `--model.hf_path DIR` (kslm.hf.encoder). kslm.json says how the weights are laid out; weights are
read with safetensors (never pickle), so reading an export runs no code from it."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from tokenizers import Tokenizer

from kslm.checkpoint import FORMAT_VERSION, Payload, check_backbone, forget, load_backbone, open_checkpoint
from kslm.data.tokenizer import kslm_tokenizer_json
from kslm.errors import CheckpointError
from kslm.io import read_json
from kslm.nn import BackboneConfig

KSLM_JSON = "kslm.json"


def is_export(path) -> bool:
    return path is not None and (Path(str(path)) / KSLM_JSON).is_file()


def _weights(folder: Path, name: str, field: str, prefix: Optional[str] = None) -> Optional[Dict[str, torch.Tensor]]:
    """The tensors of folder/name (None: no such file); with `prefix`, only those whose names start with it (read
    alone, not the whole file)."""
    path = folder / name
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{folder}: reading an export needs safetensors: pip install 'kslm[hf]' (field '{field}')") from None
    try:
        if prefix is not None:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types on a damaged file
        raise CheckpointError(f"{path}: cannot read the weights ({str(exc).splitlines()[0][:200]}) (field '{field}')") from None


def read_export(path, field: str = "model.pretrained", head_only: bool = False
                ) -> Tuple[Payload, Dict[str, torch.Tensor], Optional[dict]]:
    """→ (payload as a checkpoint would hold it, backbone state in kslm's names, head state or None). head_only:
    the backbone's weights are not read (they came another way: an HF encoder export under --model.hf_path)."""
    folder = Path(str(path))
    try:
        rec = read_json(folder / KSLM_JSON)
        tokenizer = kslm_tokenizer_json((folder / "tokenizer.json").read_text(encoding="utf-8"))  # (parses it)
        layout = rec.get("layout") if isinstance(rec, dict) else None
        hf_config = read_json(folder / "config.json") if layout == "hf_encoder" else None
    except Exception as exc:  # OSError, JSON errors (bounded: kslm.io.read_json), tokenizers' bare Exception
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{folder}: not a readable kslm export ({detail}) (field '{field}')") from None
    if not isinstance(rec, dict):
        raise CheckpointError(f"{folder / KSLM_JSON}: not a kslm export record (a {type(rec).__name__}) (field '{field}')")
    if layout not in ("native", "kslm", "hf_encoder"):
        raise CheckpointError(f"{folder}: unknown export layout {layout!r} in {KSLM_JSON} (field '{field}')")
    try:  # the same schema as a checkpoint's payload: data, never class paths or paths to write
        payload = Payload.from_dict({"task": rec.get("task", "LanguageModel"), "tokenizer": tokenizer,
                                     "backbone": rec.get("backbone"), "hf_config": hf_config,
                                     "settings": rec.get("settings") or {}, "labels": rec.get("labels"),
                                     "head": rec.get("head") or {}, "data": rec.get("data") or {},
                                     "version": FORMAT_VERSION}, folder / KSLM_JSON)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (field '{field}')") from None
    if layout != "hf_encoder" and payload.backbone is None:
        raise CheckpointError(f"{folder / KSLM_JSON}: a {layout} export without its backbone config (field '{field}')")
    if head_only:
        head = _weights(folder, "model.safetensors", field, prefix="head_module.") if layout == "kslm" else {}
        head = {k[len("head_module."):]: v for k, v in (head or {}).items()}
        return payload, {}, head or _weights(folder, "head.safetensors", field)
    weights = _weights(folder, "model.safetensors", field)
    if weights is None:
        raise CheckpointError(f"{folder}: the export has no model.safetensors (field '{field}')")
    if layout == "native":
        from kslm.hf.native import from_arcee

        extra = _weights(folder, "kslm_embedding.safetensors", field) or {}
        try:  # (no allocation: it renames and concatenates the stored tensors; shapes are checked below)
            state = from_arcee(payload.backbone_config(), weights, extra)
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{folder}: the export's weights do not fit its kslm.json ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:120]}) (field '{field}')") from None
    elif layout == "kslm":
        state = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    else:
        state = weights
    if payload.backbone is not None:
        check_backbone(payload.backbone_config(), state, folder)  # before anything of the claimed size is built
    head = {k[len("head_module."):]: v for k, v in weights.items() if k.startswith("head_module.")} \
        if layout == "kslm" else {}
    return payload, state, head or _weights(folder, "head.safetensors", field)  # (older exports: head.safetensors)


@dataclass(frozen=True)
class Pretrained:
    """`--model.pretrained`, read once (kslm.cli.connect opens it and hands it to the task): a kslm LM checkpoint or
    an export directory's payload, backbone config, backbone weights (checked against the config) and tokenizer."""

    path: str
    payload: Payload
    config: BackboneConfig = field(repr=False)
    state: Dict[str, torch.Tensor] = field(repr=False)
    tokenizer: Tokenizer = field(repr=False)


def open_pretrained(path, field_name: str = "model.pretrained") -> Pretrained:
    """The Pretrained of `path`: a kslm checkpoint (.ckpt; open_checkpoint, read once per process) or an export
    directory (kslm.json, tokenizer and weights read once here)."""
    if not is_export(path):
        if Path(str(path)).is_dir():
            raise CheckpointError(f"{path}: a directory without {KSLM_JSON} is not a kslm export (field '{field_name}')")
        opened = open_checkpoint(path, field_name)
        cfg, state, tok = load_backbone(path)  # (the same opened checkpoint)
        forget(opened)  # only the backbone's weights stay in memory, not the rest (optimiser state) of the file
        return Pretrained(str(path), opened.payload, cfg, state, tok)
    payload, state, _ = read_export(path, field_name)
    if payload.backbone is None:
        raise CheckpointError(f"{path}: the export's backbone is a Hugging Face encoder, not a kslm backbone "
                              f"(use --model.hf_path) (field '{field_name}')")
    return Pretrained(str(path), payload, payload.backbone_config(), state, payload.load_tokenizer())


__all__ = ["is_export", "read_export", "Pretrained", "open_pretrained"]
