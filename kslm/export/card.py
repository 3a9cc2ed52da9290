"""The model card (README.md) of an export: kslm version, task, backbone options, training steps and data settings,
the metrics of the run's last validation (kslm.metrics.METRICS_KEY, and checkpointing's monitored scores), and how to
load the directory with transformers and back into kslm."""

from typing import Optional


def _loader(rec: dict, p: dict) -> str:
    remote = ", trust_remote_code=True" if p["remote"] else ""
    if rec["task"] != "LanguageModel":
        auto = "AutoModelForTokenClassification" if rec["layout"] == "kslm" else "AutoModel"
        return f"{auto}.from_pretrained(DIR{remote})"
    auto = "AutoModelForMaskedLM" if (rec.get("backbone") or {}).get("mask") == "bidirectional" else "AutoModelForCausalLM"
    return f"{auto}.from_pretrained(DIR{remote})"


def _example(rec: dict) -> str:
    if rec["task"] == "LanguageModel" and (rec.get("backbone") or {}).get("mask") != "bidirectional":
        return '\nprint(tokenizer.decode(model.generate(**tokenizer("PROMPT", return_tensors="pt"), max_new_tokens=20)[0]))'
    if rec["layout"] == "kslm":
        return '\nprint(model.extract(["TEXT"], tokenizer))'
    return ""


def _table(backbone: Optional[dict]) -> str:
    if not backbone:
        return "(a Hugging Face encoder: see config.json)\n"
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in backbone.items())
    return f"| option | value |\n|---|---|\n{rows}\n"


def _metric_lines(trained: dict) -> str:
    lines = []
    if trained.get("metrics"):
        lines.append(f"The run's last validation (step {trained.get('validated_at_step')}):\n")
        lines += [f"- {k}: {_number(v)}" for k, v in trained["metrics"].items()]
    if trained.get("monitored"):
        lines += ["", "Checkpointing's monitored scores:", ""] if lines else []
        lines += [f"- {k}: {_number(v)}" for k, v in trained["monitored"].items()]
    return "\n".join(lines) or "- none recorded: the run never validated before this checkpoint was saved"


def _number(v) -> str:
    return f"{v:.6g}" if isinstance(v, (int, float)) else str(v)


def _tokenizer_note(rec: dict) -> str:
    if rec["layout"] == "hf_encoder":
        return "The tokenizer is the encoder's own."
    if rec["task"] == "LanguageModel":
        return ("The tokenizer starts a document as kslm does, with `</s>` (id 3): `tokenizer(prompt)` gives the ids "
                "`kslm predict` generates from.")
    return "The tokenizer wraps a text in `<s> … </s>` (ids 2 and 3), one window as kslm encodes it."


def model_card(rec: dict, p: dict, name: str) -> str:
    trained, data = rec["trained"], rec.get("data") or {}
    steps = trained.get("global_step")
    seen = ""
    if steps and data.get("seq_len") and data.get("batch_size") and rec["task"] == "LanguageModel":
        seen = f" (≈ {steps * data['batch_size'] * data['seq_len']:,} tokens: batches of {data['batch_size']} × " \
               f"{data['seq_len']} tokens per device)"
    metric_lines = _metric_lines(trained)
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
    if rec.get("labels") and rec["layout"] == "kslm":
        what = "entities" if rec["task"] == "EntityExtraction" else "triples"
        labels = (f"\nLabels ({len(rec['labels'])}): {', '.join(rec['labels'])} (head options {rec.get('head')}). "
                  f"`model.extract(texts, tokenizer)` gives the records `kslm predict` writes ({what} with character "
                  "offsets; long texts in kslm's windows); `model(**tokenizer(text, return_tensors=\"pt\"))` gives "
                  f"the head's logits and the token {'spans' if what == 'entities' else 'triples'} scored > 0 "
                  "(the tokenizer wraps a text in `<s> … </s>`, one window).\n")
    elif rec.get("labels"):
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
model = {loader}{_example(rec)}
```
{prefix}{labels}
{_tokenizer_note(rec)} Back into kslm: `--model.pretrained DIR` (a new run from these weights)
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
