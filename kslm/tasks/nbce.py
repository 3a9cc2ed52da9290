"""NBCE as a `kslm predict` mode: answer over a context longer than the model's window (Su, kexue.fm/archives/9617).

The records come from kslm.data.nbce.NBCEDataModule as [no-context prompt] + [one prompt per chunk]; every record is
decoded as one left-padded batch with a KV cache by kslm.nn.nbce.nbce_generate, which holds the exact step of the
reference loop (bojone/NBCE test.py, final revision). The language model is either a kslm LM checkpoint
(`checkpoint`) or a local Hugging Face causal LM (`hf_path`, extra `hf`).
"""

import sys
from pathlib import Path
from typing import List, Literal, Optional

import lightning.pytorch as pl
import torch

from kslm.errors import CheckpointError, ConfigError, DataError
from kslm.nn.nbce import BackboneLM, HFCausalLM, nbce_generate
from kslm.tasks.random_state import stable_seed

TEMPLATE = "User: {context}\n\n{question}\n\nAssistant:"
EMPTY_NOTE = "the model ended the answer at once (its first token was end-of-text)"


class NBCE(pl.LightningModule):
    """Naive Bayes-based Context Extension: log p(T|S_1..S_n) = (1+β)·log p(T|S_k*) − β·log p(T), with k* the
    context of minimum next-token entropy (kexue.fm/archives/9617).

    Args:
        checkpoint: a kslm LM checkpoint (`kslm fit --config configs/lm/…` writes checkpoints/NAME/last.ckpt), or a
            `kslm export` directory of one.
        hf_path: a Hugging Face causal LM with its tokenizer, instead of checkpoint: a local directory
            (save_pretrained, or a `kslm export` directory), or a hub id (fetched when online; offline, from the hub
            cache, else one line saying so).
        beta: β, the weight of the no-context prediction subtracted (β = n − 1 is pure naive Bayes; Su: 0.25).
        eta: η, entropy bonus of the context chosen at the previous step (a prior for staying on one context).
        top_p: nucleus kept in every row before the entropies and the merge.
        temperature: τ of the final draw from softmax(scores/τ); 0 = greedy argmax (the reference uses 0.01).
        max_new_tokens: answer length limit (the answer also stops at end-of-sequence).
        template: prompt of every row, with {context} and {question}; row 0 gets an empty context.
        pooling: min_entropy (NBCE) or mean (the mean of the contexts' log-probs, Su's first experiments).
        seed: seed of the draws when temperature > 0 (one stream per record).
        dtype: weights of a Hugging Face model: float32, bfloat16 or float16 (NBCE's scores are fp32 regardless).
    """

    predict_only = True  # no training or evaluation step: kslm.cli.options refuses fit / validate / test

    def __init__(self, checkpoint: Optional[str] = None, hf_path: Optional[str] = None, beta: float = 0.25,
                 eta: float = 0.1, top_p: float = 0.95, temperature: float = 0.01, max_new_tokens: int = 64,
                 template: str = TEMPLATE, pooling: Literal["min_entropy", "mean"] = "min_entropy", seed: int = 0,
                 dtype: Literal["float32", "bfloat16", "float16"] = "float32"):
        super().__init__()
        if (checkpoint is None) == (hf_path is None):
            raise ConfigError("NBCE needs exactly one of model.checkpoint (a kslm LM) and model.hf_path (a Hugging Face LM)")
        checks = [(beta >= -1, "model.beta must be ≥ −1"), (eta >= 0, "model.eta must be ≥ 0"),
                  (0 < top_p <= 1, "model.top_p must be in (0, 1]"), (temperature >= 0, "model.temperature must be ≥ 0"),
                  (max_new_tokens > 0, "model.max_new_tokens must be positive"),
                  ("{context}" in template and "{question}" in template, "model.template needs {context} and {question}")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            template.format(context="", question="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"model.template: only {{context}} and {{question}} may be braced ({exc!r})") from None
        self.save_hyperparameters()
        self.beta, self.eta, self.top_p, self.temperature = beta, eta, top_p, temperature
        self.max_new_tokens, self.template, self.pooling = max_new_tokens, template, pooling
        if checkpoint is not None:
            self._load_kslm(checkpoint)
        else:
            self._load_hf(hf_path, dtype)

    # ------------------------------------------------------------- loading
    def _load_kslm(self, path):
        from kslm.data.tokenizer import EOS_ID, PAD_ID
        from kslm.hf.reader import open_pretrained
        from kslm.nn import Backbone

        opened = open_pretrained(path, "model.checkpoint")  # a .ckpt or a `kslm export` directory
        cfg, state, tok = opened.config, opened.state, opened.tokenizer
        if cfg.mask == "bidirectional":
            raise CheckpointError(f"{path}: a masked-LM (bidirectional) backbone cannot generate (field 'model.checkpoint')")
        self.backbone = Backbone(cfg)
        try:
            self.backbone.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not match the stored backbone config ({str(exc).splitlines()[0]})") from None
        self.tokenizer, self.lm = tok, BackboneLM(self.backbone)
        self.eos_ids, self.pad_id, self.window = [EOS_ID], PAD_ID, cfg.max_length
        self._start = [EOS_ID]  # kslm documents start after </s> (LMDataModule's packing, LanguageModel.generate)

    def _load_hf(self, path, dtype):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ConfigError("model.hf_path needs transformers: pip install -e '.[hf]'") from None
        from kslm.hf.encoder import is_hub_name, local_dir, offline
        from kslm.hf.modeling_kslm import register

        register()  # a `kslm export` directory with remote code loads with kslm's installed classes, never its copy
        hub = is_hub_name(path)
        if hub:  # a hub id: its config and tokenizer through the hub cache (one line when offline and not cached)
            local_dir(path)
        elif not (Path(path) / "config.json").is_file():
            raise CheckpointError(f"{path}: not a Hugging Face model directory (no config.json) (field 'model.hf_path')")
        local = not hub or offline()
        try:
            self.hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype), local_files_only=local,
                                                                 trust_remote_code=False).eval()
            self.hf_tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=local, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot load the model or its tokenizer ({str(exc).splitlines()[0]})") from None
        self.lm = HFCausalLM(self.hf_model)
        eos = self.hf_model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
        if self.hf_tokenizer.eos_token_id is not None:
            eos.append(self.hf_tokenizer.eos_token_id)
        self.eos_ids, self.window = sorted(set(eos)), self.lm.window
        self.pad_id = self.hf_tokenizer.pad_token_id or 0  # any id: padded positions are masked out
        self._start = None
        from kslm.hf.reader import is_export

        if is_export(path):  # a kslm LM exported: kslm's prompts (a document starts after </s>), its tokenizer
            from kslm.data.tokenizer import EOS_ID, load_tokenizer

            self.tokenizer, self._start = load_tokenizer(path), [EOS_ID]

    # ------------------------------------------------------------- prompts
    def encode_prompt(self, context: str, question: str) -> List[int]:
        text = self.template.format(context=context, question=question)
        if self._start is not None:
            return self._start + self.tokenizer.encode(text).ids
        return self.hf_tokenizer(text).input_ids  # the tokenizer's own special tokens (<s> for Llama)

    def count_tokens(self, text: str) -> int:
        if self._start is not None:
            return len(self.tokenizer.encode(text).ids)
        return len(self.hf_tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids: List[int]) -> str:
        if self._start is not None:
            return self.tokenizer.decode(ids)
        return self.hf_tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------- predict
    def generate(self, prompts, generator=None, use_cache: bool = True):
        """prompts[0] = the no-context prompt → (answer ids, chosen row k ≥ 1 per answer token)."""
        return nbce_generate(self.lm, prompts, self.eos_ids, self.max_new_tokens, self.beta, self.eta, self.top_p,
                             self.temperature, self.pooling, generator, self.pad_id, self.device, use_cache)

    def predict_step(self, batch, batch_idx):
        g = torch.Generator(device=self.device).manual_seed(stable_seed(self.hparams.seed, "nbce", batch["line"]))
        prompts = batch["prompts"]
        try:
            tokens, chosen = self.generate(prompts, g)
        except (torch.OutOfMemoryError, MemoryError):
            rows, longest = len(prompts), max(len(p) for p in prompts)
            raise DataError(f"out of memory on {rows} rows × {longest} prompt tokens; lower data.max_batch_tokens "
                            "or shorten the context", path=batch.get("source"),
                            line=batch["line"], field="context") from None
        out = {"line": batch["line"], "id": batch["id"], "answer": self.decode(tokens), "answer_token_ids": tokens,
               "chosen_contexts": [k - 1 for k in chosen] if self.pooling == "min_entropy" else [],
               "n_contexts": len(prompts) - 1}
        if not tokens:  # max_new_tokens ≥ 1: the first token chosen was an end-of-sequence id
            out["note"] = EMPTY_NOTE
            self._empty.append(batch["line"])
        return out

    def on_predict_start(self):
        self._empty = []

    def on_predict_end(self):
        """One line for the empty answers: a plain-text LM ends a prompt that looks like the end of a document."""
        if self._empty and self.trainer.is_global_zero:
            lines = ", ".join(map(str, self._empty[:10])) + (", …" if len(self._empty) > 10 else "")
            print(f"kslm: note: {len(self._empty)} empty answer(s) (lines {lines}): {EMPTY_NOTE}; an LM trained on "
                  "plain text (documents that end at a blank line) knows no chat template: give it a completion "
                  "prompt (model.template without blank lines, as configs/nbce/kslm-lm.yaml's, and a question that "
                  "the answer continues)", file=sys.stderr)


__all__ = ["NBCE", "TEMPLATE"]
