"""The run's latest validation, recorded in every checkpoint beside the payload (kslm.metrics.METRICS_KEY: the payload
schema is unchanged), so that `kslm export` can put the run's final metrics in the model card."""

from typing import Optional

from kslm.metrics import METRICS_KEY, last_validation, metrics_record


class LastValidation:
    """Mixin of KslmTask: the step of each validation of a fit (not the sanity check's) is noted when it starts; at
    each save the validation values Lightning keeps in `callback_metrics` until the next validation go into the
    checkpoint with that step; a resumed run takes them back (a save before its next validation keeps them)."""

    _validated: Optional[dict] = None  # {"step", "metrics"}

    def on_validation_start(self):
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._validated = {"step": int(self.global_step), "metrics": {}}

    def save_validation(self, checkpoint: dict) -> None:
        if self._validated is None:
            return
        if getattr(self, "_trainer", None) is not None:
            self._validated["metrics"] = last_validation(self._trainer.callback_metrics) or self._validated["metrics"]
        if self._validated["metrics"]:
            checkpoint[METRICS_KEY] = {"step": self._validated["step"], "metrics": dict(self._validated["metrics"])}

    def load_validation(self, checkpoint: dict) -> None:
        saved = metrics_record(checkpoint.get(METRICS_KEY))  # (a malformed entry is ignored here; export refuses it)
        if saved is not None:
            self._validated = {"step": saved["step"], "metrics": dict(saved["metrics"])}


__all__ = ["LastValidation"]
