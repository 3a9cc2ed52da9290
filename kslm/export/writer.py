"""`kslm export`: a kslm checkpoint → a Hugging Face directory (config.json, model.safetensors, tokenizer files,
generation_config.json for causal LMs, README.md model card, kslm.json), written atomically (kslm.io.atomic_dir).

What goes where:
    LM, a config some HF architecture is exactly (kslm.hf.native)  → that architecture, no remote code
    LM, anything else                                                 → KslmForCausalLM / KslmForMaskedLM (remote code:
                                                                        modeling_kslm.py + configuration_kslm.py, auto_map)
    NER / RE over a kslm backbone                                      → KslmForExtraction
                                                                        (AutoModelForTokenClassification, remote code;
                                                                        AutoModel: the encoder alone), head weights in
                                                                        model.safetensors
    NER / RE over a Hugging Face encoder                               → that encoder's own config + head.safetensors
`kslm.json` is kslm's own record (task, backbone config, labels, head options, settings, how the weights are laid
out); kslm.hf.reader reads the directory back (`--model.pretrained DIR`, NBCE, `--model.hf_path DIR`).
Weights are safetensors only; kslm's tied head keeps one matrix (no duplicate tensor is written).
"""

import json
import math
import shutil
from pathlib import Path
from typing import Dict

import torch

from kslm._version import __version__
from kslm.checkpoint import Payload, check_backbone, open_checkpoint
from kslm.errors import CheckpointError, ConfigError
from kslm.io import atomic_dir
from kslm.metrics import METRICS_KEY, metrics_record
from kslm.nn import BackboneConfig

HERE = Path(__file__).parent.parent / "hf"  # the remote-code files live in kslm/hf/
REMOTE_FILES = ("modeling_kslm.py", "configuration_kslm.py")
KSLM_JSON = "kslm.json"
EXTRA_WEIGHTS = "kslm_embedding.safetensors"  # what a native export's folded embedding loses
HEAD_WEIGHTS = "head.safetensors"  # the head of an NER / RE export over a Hugging Face encoder (its own architecture)
MAX_ENTITIES = 32  # RelationExtraction's default max_entities (a run-time option: not in the checkpoint)
FORMAT = 1


def _tensors(ckpt: dict, prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in (ckpt.get("state_dict") or {}).items() if k.startswith(prefix)}


def save_safetensors(path: Path, tensors: Dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in sorted(tensors.items())}, str(path), metadata={"format": "pt"})


def _checked_backbone(cfg: BackboneConfig, state: dict, source) -> None:
    """The weights must be exactly those of the stored config, checked on the meta device (a checkpoint claiming a
    larger model than it holds allocates nothing)."""
    check_backbone(cfg, state, source)


def _transformers():
    try:
        import safetensors  # noqa: F401
        import transformers
    except ImportError:
        raise ConfigError("kslm export needs the optional extra: pip install 'kslm[hf]' (transformers, safetensors)") from None
    return transformers


def _lm_files(cfg: BackboneConfig, state: dict, ids: dict) -> dict:
    """(config, weights, extra weights, architecture, remote) of an LM: native when the logits agree, else remote."""
    from kslm.hf import native

    arch = native.candidate(cfg)
    if arch is not None:
        hf_state, extra = native.to_arcee(cfg, state)
        gap = native.max_logit_gap(cfg, state, native.build_arcee(cfg, hf_state))
        if gap <= native.TOLERANCE:
            config = native.arcee_config(cfg, **ids)
            return {"config": config, "weights": hf_state, "extra": extra, "architecture": arch, "remote": False,
                    "logit_gap": gap}
    cls = "KslmForMaskedLM" if cfg.mask == "bidirectional" else "KslmForCausalLM"
    auto = "AutoModelForMaskedLM" if cfg.mask == "bidirectional" else "AutoModelForCausalLM"
    return {"config": _kslm_config(cfg, cls, auto, ids), "weights": {f"backbone.{k}": v for k, v in state.items()},
            "extra": None, "architecture": cls, "remote": True}


def _kslm_config(cfg: BackboneConfig, cls: str, auto: str, ids: dict, **extra):
    from kslm.hf.configuration_kslm import KslmConfig

    auto_map = {"AutoConfig": "configuration_kslm.KslmConfig", "AutoModel": "modeling_kslm.KslmModel",
                auto: f"modeling_kslm.{cls}"}
    return KslmConfig(backbone=cfg.to_dict(), kslm_version=__version__, architectures=[cls], auto_map=auto_map,
                      **extra, **{k: v for k, v in ids.items() if v is not None})


def _extraction_files(cfg: BackboneConfig, payload: Payload, backbone: dict, head: dict, ids: dict) -> dict:
    """An NER / RE export over a kslm backbone: its head class (KslmForExtraction, remote code,
    AutoModelForTokenClassification) with the head's weights beside the backbone's in model.safetensors."""
    cls = "KslmForExtraction"
    config = _kslm_config(cfg, cls, "AutoModelForTokenClassification", ids, kslm_task=payload.task,
                          kslm_labels=list(payload.labels), kslm_head=dict(payload.head), kslm_windows=dict(payload.data),
                          kslm_max_entities=payload.settings.get("max_entities", MAX_ENTITIES) if
                          payload.task == "RelationExtraction" else None)
    weights = {**{f"backbone.{k}": v for k, v in backbone.items()}, **{f"head_module.{k}": v for k, v in head.items()}}
    return {"config": config, "weights": weights, "extra": None, "head": None, "architecture": cls, "remote": True,
            "causal": False, "backbone": cfg.to_dict()}


def plan(ckpt: dict, payload: Payload, source) -> dict:
    """What to write for this checkpoint (no file touched yet)."""
    from kslm.hf.tokenizer_files import special_ids

    ids = special_ids(payload.load_tokenizer(), payload.task)
    head = _tensors(ckpt, "head_module.") if payload.task != "LanguageModel" else None
    if payload.task != "LanguageModel" and not head:
        raise CheckpointError(f"{source}: a {payload.task} checkpoint without its head's weights")
    if (payload.hf_config or {}).get("model_type") == "kslm":  # fine-tuned from an export (--model.hf_path DIR)
        cfg = BackboneConfig.from_dict(payload.hf_config["backbone"])
        state = _tensors(ckpt, "backbone.model.backbone.")
        _checked_backbone(cfg, state, source)
        return _extraction_files(cfg, payload, state, head, ids)
    if payload.hf_config is not None:  # an HF encoder fine-tuned by kslm: its own architecture, as it came in
        config = dict(payload.hf_config)
        weights = _tensors(ckpt, "backbone.model.")
        return {"config": config, "weights": weights, "extra": None, "head": head, "remote": False,
                "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0], "causal": False}
    cfg = payload.backbone_config()
    state = _tensors(ckpt, "backbone.")
    _checked_backbone(cfg, state, source)
    if payload.task == "LanguageModel":
        out = _lm_files(cfg, state, ids)
        out.update(head=None, causal=cfg.mask != "bidirectional")
        return out
    return _extraction_files(cfg, payload, state, head, ids)


def record(ckpt: dict, payload: Payload, p: dict, source=None) -> dict:
    """kslm.json: what kslm needs to take the directory back, and what the card reports."""
    layout = "native" if not p["remote"] else "kslm"
    if payload.hf_config is not None and not p["remote"]:
        layout = "hf_encoder"
    try:
        validated = metrics_record(ckpt.get(METRICS_KEY), source)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (field '--ckpt_path')") from None
    return {"format": FORMAT, "kslm_version": __version__, "task": payload.task, "layout": layout,
            "architecture": p["architecture"], "backbone": p.get("backbone", payload.backbone),
            "labels": payload.labels, "head": payload.head,
            "settings": payload.settings, "data": payload.data,
            "trained": {"global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"),
                        "validated_at_step": validated["step"] if validated else None,
                        "metrics": _json_numbers(validated["metrics"]) if validated else {},
                        "monitored": _monitored(ckpt)}}


def _json_numbers(metrics: dict) -> dict:
    """Floats for kslm.json (strict JSON has no NaN or infinity: those are written as the strings nan, inf)."""
    return {k: v if math.isfinite(v) else str(v) for k, v in metrics.items()}


def _monitored(ckpt: dict) -> dict:
    """ModelCheckpoint's monitored scores, when the run had checkpoint.monitor."""
    out = {}
    for state in (ckpt.get("callbacks") or {}).values():
        if not isinstance(state, dict) or not isinstance(state.get("monitor"), str):
            continue
        for key in ("current_score", "best_model_score"):
            value = state.get(key)
            if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                out[f"{state['monitor'][:200]} ({key.replace('_', ' ')})"] = _json_numbers({"v": float(value)})["v"]
    return out


# every name `export` may write: --overwrite replaces a directory only when it holds these alone (and kslm.json)
WRITTEN = frozenset({"config.json", "model.safetensors", EXTRA_WEIGHTS, HEAD_WEIGHTS, *REMOTE_FILES, "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", KSLM_JSON,
                     "README.md"})


def check_out(out, overwrite: bool) -> Path:
    """--out as a directory export may write: not a link, not the working directory or one above it, and — to
    replace it with --overwrite — a kslm export (kslm.json) holding nothing kslm did not write."""
    text = str(out)
    if not text.strip():
        raise ConfigError("--out is empty: give the directory to write (field '--out')")
    out = Path(text)
    if out.is_symlink():
        raise ConfigError(f"{out}: a symbolic link; give the directory itself (field '--out')")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory (field '--out')")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ConfigError(f"{out}: the working directory (or a folder holding it) cannot be the export; give a new "
                          "directory, e.g. --out exports/NAME (field '--out')")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if not overwrite:
        raise ConfigError(f"{out}: the output directory exists and is not empty; give --overwrite to replace it "
                          "(field '--out')")
    entries = sorted(out.iterdir())
    foreign = [e.name + ("/" if e.is_dir() and not e.is_symlink() else "") for e in entries
               if e.name not in WRITTEN or not e.is_file() or e.is_symlink()]
    if not (out / KSLM_JSON).is_file() or foreign:
        why = f"it holds {', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}, which kslm did not write" \
            if foreign else f"it has no {KSLM_JSON}"
        raise ConfigError(f"{out}: --overwrite replaces only a kslm export, and {why}; nothing was touched: move "
                          "them away or choose another --out (field '--out')")
    return out


def export(ckpt_path, out, overwrite: bool = False) -> dict:
    """Write the export of `ckpt_path` to `out` (atomically); returns kslm.json's record plus the files written."""
    out = check_out(out, overwrite)
    tf = _transformers()
    opened = open_checkpoint(ckpt_path, "--ckpt_path")
    ckpt, payload = opened.raw, opened.payload
    if not ckpt.get("state_dict"):
        raise CheckpointError(f"{ckpt_path}: the checkpoint holds no weights (field '--ckpt_path')")
    p = plan(ckpt, payload, ckpt_path)
    rec = record(ckpt, payload, p, ckpt_path)
    from kslm.export.card import model_card
    from kslm.hf.tokenizer_files import special_ids, write_tokenizer

    with atomic_dir(out, overwrite=overwrite) as tmp:
        config = p["config"]
        if isinstance(config, dict):
            (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False, default=str) + "\n",
                                             encoding="utf-8")
        else:
            config.save_pretrained(str(tmp))
        save_safetensors(tmp / "model.safetensors", p["weights"])
        if p["extra"]:
            save_safetensors(tmp / EXTRA_WEIGHTS, p["extra"])
        if p["head"]:
            save_safetensors(tmp / HEAD_WEIGHTS, p["head"])
        if p["remote"]:
            for name in REMOTE_FILES:
                shutil.copyfile(HERE / name, tmp / name)
        write_tokenizer(tmp, payload.tokenizer, payload.max_length, payload.task)
        if p["causal"]:
            ids = special_ids(payload.load_tokenizer(), payload.task)
            tf.GenerationConfig(do_sample=False, use_cache=True, eos_token_id=ids["eos_token_id"],
                                pad_token_id=ids["pad_token_id"], bos_token_id=ids["bos_token_id"]).save_pretrained(str(tmp))
        (tmp / KSLM_JSON).write_text(json.dumps(rec, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(rec, p, out.name), encoding="utf-8")
        files = sorted(f.name for f in tmp.iterdir())
    return {**rec, "files": files, "remote": p["remote"], "logit_gap": p.get("logit_gap")}


__all__ = ["export", "plan", "record", "save_safetensors", "KSLM_JSON", "EXTRA_WEIGHTS", "HEAD_WEIGHTS"]
