"""LanguageModel: pretraining with the objective the mask implies, and generation for `kslm predict`.

    causal         next-token prediction on every position (GPT)
    prefix         UniLM prefix LM (kexue.fm/archives/9529): a random prefix per sample attends both ways;
                   the loss is on the continuation only
    bidirectional  masked LM (15 % of tokens: 80 % <mask>, 10 % random, 10 % kept), as GAU-α / RoFormerV2
Loss is the token mean of the cross-entropy (fp32); perplexity = exp(val loss). With `aux_objective: heat`
(bidirectional only) the training loss adds aux_weight × the heat-equation feature prediction of the masked
positions (kslm/nn/heat.py): train/loss is then the sum, logged apart as train/mlm_loss and train/aux_loss;
val/loss stays the MLM loss. Randomness (prefix lengths, MLM masks) comes from a generator seeded by
(seed, step, rank), so a resumed run draws the same.

At each validation of a fit, a causal or prefix LM logs `sample_count` greedy continuations (`sample_tokens` new
tokens, KV-cached) of fixed prompts — the first tokens of the first validation blocks — as TensorBoard text
(tag val/samples). Greedy decoding draws no random numbers and runs in eval mode under no_grad, so training is
unchanged by it.
"""

import math
import sys
from typing import Iterator, Literal, Optional

import torch
import torchmetrics
from torch.nn import functional as F

from kslm.data.tokenizer import EOS_ID, MASK_ID, SPECIAL_TOKENS
from kslm.errors import ConfigError
from kslm.nn.generate import decode_stream, sample_next
from kslm.nn.heat import HeatPredictor
from kslm.tasks.base import KslmTask
from kslm.tasks.random_state import stable_seed


class LanguageModel(KslmTask):
    """Language-model pretraining (see KslmTask for backbone and optimiser options).

    Args:
        mlm_probability: fraction of tokens masked when backbone.mask is bidirectional.
        seed: seed of the prefix lengths / MLM masks and of sampling.
        max_new_tokens: tokens generated per prompt by `kslm predict`.
        temperature: sampling temperature; 0 = greedy.
        top_p: nucleus sampling mass (with temperature > 0).
        aux_objective: none, or heat: also predict the masked positions' final features from their visible
            neighbours through a shared linear map (Su's heat-equation idea, kexue.fm/archives/9359; experimental;
            backbone.mask bidirectional only). Costs one extra forward pass (the unmasked teacher, no gradient).
        aux_weight: weight of the auxiliary loss.
        heat_mode: interpolate (both neighbours, weighted by distance) or extrapolate (the left neighbour only).
        sample_count: greedy continuations logged as TensorBoard text (val/samples) at each validation of a fit;
            0 = none. Causal and prefix masks only (a masked LM cannot generate).
        sample_tokens: new tokens per sample (0 = none).
    """

    weight_options = (*KslmTask.weight_options, "aux_objective", "heat_mode")
    runtime_options = (*KslmTask.runtime_options, "max_new_tokens", "temperature", "top_p", "sample_count",
                       "sample_tokens")
    sample_prompt_tokens = 16  # the prompts: this many first tokens (at most half) of the first validation blocks
    logged_metrics = (*KslmTask.logged_metrics, "val/ppl", "test/ppl", "train/aux_loss", "train/mlm_loss")
    predicts_from_pretrained = True  # `kslm predict --model.pretrained X` generates with X's weights

    def __init__(self, *args, mlm_probability: float = 0.15, seed: int = 0, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 0.95, aux_objective: Literal["none", "heat"] = "none",
                 aux_weight: float = 1.0, heat_mode: Literal["interpolate", "extrapolate"] = "interpolate",
                 sample_count: int = 2, sample_tokens: int = 32, **kwargs):
        super().__init__(*args, **kwargs)
        if aux_objective == "heat" and self.backbone_config.mask != "bidirectional":
            raise ConfigError(f"model.aux_objective heat needs model.backbone.mask bidirectional (masked LM), "
                              f"got {self.backbone_config.mask}")
        checks = [
            ("aux_weight", aux_weight, aux_weight >= 0 and math.isfinite(aux_weight), "a finite number ≥ 0"),
            ("mlm_probability", mlm_probability, 0 < mlm_probability < 1, "in (0, 1)"),
            ("max_new_tokens", max_new_tokens, max_new_tokens >= 1, "≥ 1"),
            ("temperature", temperature, temperature >= 0 and math.isfinite(temperature), "a finite number ≥ 0 (0 = greedy)"),
            ("top_p", top_p, 0 < top_p <= 1, "in (0, 1]"),
            ("sample_count", sample_count, sample_count >= 0, "≥ 0 (0 = no samples)"),
            ("sample_tokens", sample_tokens, sample_tokens >= 0, "≥ 0 (0 = no samples)"),
        ]
        for key, value, ok, what in checks:
            if not ok:
                raise ConfigError(f"model.{key} must be {what}, got {value!r}")
        self.heat: Optional[HeatPredictor] = None
        if self.hparams.hf_path:
            raise ConfigError("model.hf_path is for the extraction tasks; LanguageModel trains kslm backbones "
                              "(for an HF causal LM use the NBCE predict mode)")
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.sample_count, self.sample_tokens = sample_count, sample_tokens
        self._sample_prompts: Optional[list] = None
        self.val_loss = torchmetrics.MeanMetric()

    def build(self, tokenizer, cfg=None, **kwargs):
        super().build(tokenizer, cfg, **kwargs)
        if self.hparams.get("aux_objective", "none") == "heat":  # its map is part of the checkpoint, so resume keeps it
            self.heat = HeatPredictor(self.backbone_config.d_model, self.hparams.heat_mode)

    # ---------------------------------------------------------------- losses
    def _generator(self, *keys) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(stable_seed(self.hparams.seed, *keys))
        return g

    def lm_loss(self, ids: torch.Tensor, g: torch.Generator, aux: bool = False):
        """ids [B, T+1] → (mean loss, number of target tokens[, auxiliary heat loss when `aux`])."""
        x, y = ids[:, :-1], ids[:, 1:].clone()
        mask, prefix = self.backbone_config.mask, None
        if mask == "prefix":
            T = x.shape[1]
            prefix = torch.randint(1, T, (x.shape[0],), generator=g, device=x.device)
            y[torch.arange(T, device=x.device)[None] < (prefix[:, None] - 1)] = -100
        elif mask == "bidirectional":
            x, y = x.clone(), x.clone()
            chosen = torch.rand(x.shape, generator=g, device=x.device, dtype=torch.float32) < self.hparams.mlm_probability
            chosen &= x >= len(SPECIAL_TOKENS)
            y[~chosen] = -100
            r = torch.rand(x.shape, generator=g, device=x.device, dtype=torch.float32)
            x[chosen & (r < 0.8)] = MASK_ID
            rand_tok = torch.randint(len(SPECIAL_TOKENS), self.backbone_config.vocab_size, x.shape, generator=g, device=x.device)
            swap = chosen & (r >= 0.8) & (r < 0.9)
            x[swap] = rand_tok[swap]
        hidden = self.backbone(x, prefix_lengths=prefix)
        logits = self.backbone.logits(hidden)
        n = (y != -100).sum()
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
        if not aux:
            return loss / n.clamp(min=1), n
        with torch.no_grad():  # the teacher: the same backbone on the unmasked text (stop-gradient target)
            target = self.backbone(ids[:, :-1])
        return loss / n.clamp(min=1), n, self.heat.loss(hidden, target, y != -100)[0]

    def compute_loss(self, batch):
        g = self._generator("train", self.global_step, self.global_rank)
        if self.heat is None:
            return self.lm_loss(batch["input_ids"], g)[0]
        loss, _, aux = self.lm_loss(batch["input_ids"], g, aux=True)
        self.log("train/aux_loss", aux, batch_size=batch["input_ids"].shape[0])
        self.log("train/mlm_loss", loss, batch_size=batch["input_ids"].shape[0])
        return loss + self.hparams.aux_weight * aux

    def validation_step(self, batch, batch_idx):
        loss, n = self.lm_loss(batch["input_ids"], self._generator("val", batch_idx, self.global_rank))
        self.val_loss.update(loss, weight=n)
        if batch_idx == 0 and self._sample_prompts is None:  # fixed prompts: the validation blocks are not shuffled
            k = min(self.sample_prompt_tokens, batch["input_ids"].shape[1] // 2)
            self._sample_prompts = batch["input_ids"][: self.sample_count, :k].tolist()

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        # MeanMetric has already reduced over ranks; sync_dist only keeps Lightning from warning
        self.log_dict({"val/loss": loss, "val/ppl": torch.exp(loss.clamp(max=50))}, prog_bar=True, sync_dist=True)
        self.log_samples()

    def log_samples(self):
        """Greedy continuations of the fixed prompts as TensorBoard text (val/samples) — in a fit, on global rank 0,
        with a TensorBoardLogger, one device or DDP (a sharded model would need every rank in each forward)."""
        from lightning.pytorch.loggers import TensorBoardLogger
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        trainer = self.trainer
        if (not self.sample_count or not self.sample_tokens or trainer.state.fn != "fit" or trainer.sanity_checking
                or not trainer.is_global_zero or not isinstance(self.logger, TensorBoardLogger)
                or not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)) or not self._sample_prompts):
            return
        if self.backbone_config.mask == "bidirectional":
            if not getattr(self, "_said_no_samples", False):
                print("kslm: note: no sample generations (model.sample_count): a bidirectional (masked-LM) backbone "
                      "cannot generate", file=sys.stderr)
                self._said_no_samples = True
            return
        # self.backbone directly: no DDP wrapper (and no collective) is involved
        samples = [(self.tokenizer.decode(p), self.tokenizer.decode(self.generate(p, self.sample_tokens)))
                   for p in self._sample_prompts]
        text = "\n\n".join(f"**{i + 1}.** prompt / continuation (greedy, {self.sample_tokens} tokens):\n\n"
                            + "\n".join("    " + line for line in f"{p}\n--\n{c}".splitlines())
                            for i, (p, c) in enumerate(samples))
        self.logger.experiment.add_text("val/samples", text, self.global_step)

    test_step = validation_step

    def on_test_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log_dict({"test/loss": loss, "test/ppl": torch.exp(loss.clamp(max=50))})

    @property
    def flops_per_batch(self) -> Optional[float]:
        """Analytic training FLOPs of the latest training batch (blocks of T + 1 tokens: T inputs), for the
        throughput monitor."""
        if self.backbone is None or self._tokens_per_batch is None:
            return None
        B, T = self._tokens_per_batch[0], self._tokens_per_batch[1] - 1
        return self.backbone.flops_per_token(T) * T * B

    # ------------------------------------------------------------ generation
    def prompt_room(self) -> int:
        """Prompt tokens that fit the window beside </s> (which starts a document) and max_new_tokens."""
        return self.backbone_config.max_length - 1 - self.max_new_tokens

    def on_predict_start(self):
        """Checked before the first prompt: a backbone that can generate, and a window with room for a prompt."""
        if self.backbone_config.mask == "bidirectional":
            raise ConfigError("a bidirectional (masked-LM) backbone cannot generate; use mask causal or prefix")
        if self.prompt_room() < 1:
            raise ConfigError(f"model.max_new_tokens {self.max_new_tokens} leaves no room for a prompt under the "
                              f"backbone's max_length {self.backbone_config.max_length}; lower model.max_new_tokens")
        self._cut_prompts = []

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        """Incremental decoding with the backbone's KV cache (kslm.nn.generate: greedy at temperature 0, else nucleus
        sampling); stops at </s>. Returns the new token ids."""
        return list(self.generate_stream(prompt_ids, max_new_tokens, temperature, top_p, generator))

    def generate_stream(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                        generator: Optional[torch.Generator] = None) -> Iterator[int]:
        """generate's new token ids, yielded one by one as they are decoded."""
        if self.backbone_config.mask == "bidirectional":
            raise ConfigError("a bidirectional (masked-LM) backbone cannot generate; use mask causal or prefix")
        ids = torch.tensor([[EOS_ID] + list(prompt_ids)], device=self.device)  # </s> starts a document
        budget = self.backbone_config.max_length - ids.shape[1]
        if budget <= 0:
            raise ConfigError(f"prompt of {ids.shape[1]} tokens leaves no room under max_length {self.backbone_config.max_length}")
        prefix, cache = torch.tensor([ids.shape[1]], device=self.device), {}

        def step(new):
            return self.backbone.logits(self.backbone(new, prefix_lengths=prefix, cache=cache)[:, -1]).float()

        yield from decode_stream(step, ids, min(max_new_tokens, budget), [EOS_ID],
                                 lambda logits: sample_next(logits, temperature, top_p, generator))

    def prompt_ids(self, text: str):
        """The prompt's token ids that fit the window, and how many of its characters were left out: a prompt
        longer than the window keeps its last tokens (those next to the continuation). A very long prompt is
        tokenized from a tail that surely holds them (room × the longest token's length × 4), not whole."""
        room = self.prompt_room()
        if getattr(self, "_token_chars", None) is None:
            self._token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        start = max(0, len(text) - (room * self._token_chars * 4 + 16))
        enc = self.tokenizer.encode(text[start:])
        if start and len(enc.ids) <= room:  # (a normaliser shrank the tail a lot): tokenize it all
            start, enc = 0, self.tokenizer.encode(text)
        ids, offsets = enc.ids, enc.offsets
        if len(ids) <= room:
            return ids, 0
        k = len(ids) - room  # ≥ 1: a tail's first token, maybe part of a cut word, is always dropped
        return ids[k:], start + offsets[k][0]

    def predict_step(self, batch, batch_idx):
        """One prompt → its record with "generation" and "token_ids". A prompt longer than the window keeps its last
        tokens: the record says how many characters were left out ("prompt_chars_dropped") and the run ends with a
        warning counting such prompts — nothing is skipped."""
        *_, record = self.predict_stream(batch, batch_idx, deltas=False)
        return record

    def predict_stream(self, batch, batch_idx, deltas: bool = True) -> Iterator[dict]:
        """predict_step as it happens: {"delta": text} whenever the generation's text grows (a character split over
        byte tokens waits until it is whole), then predict_step's record. The deltas join to its "generation"."""
        hp = self.hparams
        ids, dropped = self.prompt_ids(batch["prompt"])
        if dropped:
            self._cut_prompts.append((batch.get("line"), dropped))
        g = torch.Generator(device=self.device).manual_seed(stable_seed(hp.seed, "predict", batch_idx))
        new, shown = [], ""
        for token in self.generate_stream(ids, self.max_new_tokens, self.temperature, self.top_p, g):
            new.append(token)
            if not deltas:
                continue
            text = self.tokenizer.decode(new)
            if len(text) > len(shown) and text.startswith(shown) and not text.endswith("\ufffd"):
                yield {"delta": text[len(shown):]}
                shown = text
        out = {**batch, "generation": self.tokenizer.decode(new), "token_ids": new}
        if deltas and out["generation"] != shown and out["generation"].startswith(shown):
            yield {"delta": out["generation"][len(shown):]}
        if dropped:
            out["prompt_chars_dropped"] = dropped
        yield out

    def on_predict_end(self):
        cut = getattr(self, "_cut_prompts", [])
        if cut:
            lines = ", ".join(str(line) for line, _ in cut[:10]) + (", …" if len(cut) > 10 else "")
            print(f"kslm: warning: {len(cut)} prompt(s) longer than the window ({self.prompt_room()} tokens beside "
                  f"</s> and model.max_new_tokens {self.max_new_tokens}) kept their last tokens; "
                  f"{sum(n for _, n in cut)} characters left out in all (lines {lines}; each record's "
                  "'prompt_chars_dropped' says how many)", file=sys.stderr)


__all__ = ["LanguageModel"]
