"""The model card (README.md) of an export: kslm version, task, backbone options, training steps and data settings,
the metrics the checkpoint holds, and how to load the directory with transformers and back into kslm."""

from typing import Optional


def _loader(rec: dict, p: dict) -> str:
    remote = ", trust_remote_code=True" if p["remote"] else ""
    if rec["task"] != "LanguageModel":
        return f"AutoModel.from_pretrained(DIR{remote})"
    auto = "AutoModelForMaskedLM" if (rec.get("backbone") or {}).get("mask") == "bidirectional" else "AutoModelForCausalLM"
    return f"{auto}.from_pretrained(DIR{remote})"


def _table(backbone: Optional[dict]) -> str:
    if not backbone:
        return "(a Hugging Face encoder: see config.json)\n"
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in backbone.items())
    return f"| option | value |\n|---|---|\n{rows}\n"


def model_card(rec: dict, p: dict, name: str) -> str:
    trained, data = rec["trained"], rec.get("data") or {}
    steps = trained.get("global_step")
    seen = ""
    if steps and data.get("seq_len") and data.get("batch_size") and rec["task"] == "LanguageModel":
        seen = f" (≈ {steps * data['batch_size'] * data['seq_len']:,} tokens: batches of {data['batch_size']} × " \
               f"{data['seq_len']} tokens per device)"
    metrics = trained.get("metrics") or {}
    metric_lines = "\n".join(f"- {k}: {v:.6g}" for k, v in metrics.items()) or \
        "- none recorded in the checkpoint (kslm logs training and validation metrics to TensorBoard)"
    loader = _loader(rec, p)
    auto = loader.split(".", 1)[0]
    remote_note = ("This export uses **remote code**: `modeling_kslm.py` builds the model from `kslm.nn` with the stored "
                   "backbone config, so **kslm must be installed** (with its `hf` extra) and loading needs "
                   "`trust_remote_code=True`.") if p["remote"] else \
        (f"This export is a native `{rec['architecture']}`: no remote code, kslm is not needed to load it.")
    prefix = ""
    if (rec.get("backbone") or {}).get("mask") == "prefix":
        prefix = ("\nPrefix LM (UniLM mask): pass `prefix_lengths=torch.tensor([n])` (the prefix's columns) to the model "
                  "or to `generate`; without it, the prompt given to the first cached call is the prefix.\n")
    labels = ""
    if rec.get("labels"):
        labels = (f"\nLabels ({len(rec['labels'])}): {', '.join(rec['labels'])}. The {rec['task']} head's weights are in "
                  f"`head.safetensors` (head options {rec.get('head')}); kslm reads them back.\n")
    return f"""---
library_name: transformers
tags:
- kslm
---

# {name}

Exported by `kslm export` (kslm {rec['kslm_version']}) from a `{rec['task']}` checkpoint.
Architecture: `{rec['architecture']}`. {remote_note}

```python
from transformers import {auto}, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(DIR{", trust_remote_code=True" if p["remote"] else ""})
model = {loader}
```
{prefix}{labels}
kslm's tokenizer adds no special tokens: kslm LMs start a document after `</s>` (id 3), so prepend it to prompts as
`kslm predict` does. Back into kslm: `--model.pretrained DIR` (a new run from these weights)
{"or `--model.hf_path DIR` (extraction tasks), " if rec['task'] != 'LanguageModel' else ""}and NBCE's `--model.hf_path DIR`.

## Training

- steps: {steps} (epoch {trained.get('epoch')}){seen}
- data settings: {data or 'none recorded'}
- training data: the checkpoint records its data settings, not the files it was trained on

## Final metrics

{metric_lines}

## Backbone options

{_table(rec.get('backbone'))}
Task settings: `{rec.get('settings')}`
"""


__all__ = ["model_card"]
