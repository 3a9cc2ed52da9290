"""`kslm VERB --help` for the trainer verbs: kslm's options first and briefly (the run, the task and data, the trainer
options people set), without importing Lightning; `kslm VERB --help-all` prints Lightning's full list
(kslm.cli.trainer). tests/test_front_door.py checks that every option named here exists in the full parser."""

DESCRIPTIONS = {  # the first line of each verb's help (also the description of Lightning's full help)
    "fit": "Train a model: a task (--model) on data (--data) with Lightning's Trainer (--trainer.*); or resume a run "
           "(--ckpt_path).",
    "validate": "Evaluate a checkpoint on validation data: the validation split of the config's data, or "
                "--data.val_file (NER / RE) / --data.data_files (LM) with --ckpt_path alone.",
    "test": "Evaluate a checkpoint on a labelled test file (--data.test_file); without one, on the validation data "
            "(a note says so).",
    "predict": "Predict with a checkpoint: NER entities, RE triples, LM generations or NBCE answers, one JSON line per "
               "input record.",
}

CKPT = {
    "fit": "resume a run: a run's last.ckpt, or `last` (checkpoints/NAME/last.ckpt)",
    "validate": "the checkpoint; without --config its task and settings",
    "test": "the checkpoint; without --config its task and settings",
    "predict": "the checkpoint; without --config its task and settings",
}
DATA = {
    "fit": ("--data.train_file F", "training records (NER / RE); LM: --data.data_files F"),
    "validate": ("--data.val_file F", "validation records (NER / RE); LM: --data.data_files F"),
    "test": ("--data.test_file F", "labelled test records (any supported format)"),
    "predict": ("--data.predict_file F", "records or prompts, one per line"),
}
USAGE = {
    "fit": "kslm fit --config CONFIG.yaml [--name NAME] [--OPTION VALUE …]",
    "validate": "kslm validate --ckpt_path CKPT [--config CONFIG.yaml | --data.val_file F] [--OPTION VALUE …]",
    "test": "kslm test --ckpt_path CKPT --data.test_file FILE [--OPTION VALUE …]",
    "predict": "kslm predict --ckpt_path CKPT --data.predict_file FILE [--predictions.path OUT] [--OPTION VALUE …]",
}


def sections(verb: str) -> list:
    """(heading, [(option, what it does)]) of a trainer verb's short help."""
    run = [("-c, --config FILE", "a config (configs/lm/gau.yaml, …); later options override it"),
           ("--name NAME", "the run's name: checkpoints/NAME/, logs/NAME/ (default: the config's file name)"),
           ("--ckpt_path PATH", CKPT[verb]),
           ("--print_config", "print the resolved config and stop")]
    task = [("--model CLASS", "LanguageModel, EntityExtraction, RelationExtraction, NBCE"),
            ("--model.help CLASS", f"every option of a task (kslm {verb} --model.help LanguageModel)"),
            ("--model.KEY VALUE", "e.g. --model.backbone.norm deepnorm, --model.optim.lr 3e-4"),
            ("--data CLASS", "LMDataModule, NERDataModule, REDataModule, NBCEDataModule"),
            ("--data.help CLASS", f"every option of a data module (kslm {verb} --data.help NERDataModule)"),
            DATA[verb],
            ("--data.batch_size N", "records (or blocks) per batch")]
    trainer = [("--trainer.accelerator A", "cpu, gpu, auto"),
               ("--trainer.devices N", "devices per node"),
               ("--trainer.precision P", "32-true, bf16-mixed, 16-mixed, bf16-true"),
               ("--trainer.strategy S", "ddp, fsdp2, … (several devices)")]
    if verb == "fit":
        trainer += [("--trainer.num_nodes N", "nodes (torchrun, SLURM)"),
                    ("--trainer.max_steps N", "optimizer steps to train"),
                    ("--trainer.max_epochs N", "epochs to train (when max_steps is -1)"),
                    ("--trainer.val_check_interval N", "validate every N batches"),
                    ("--trainer.limit_val_batches N", "batches per validation"),
                    ("--trainer.log_every_n_steps N", "TensorBoard and progress lines every N steps"),
                    ("--trainer.accumulate_grad_batches N", "batches per optimizer step"),
                    ("--trainer.gradient_clip_val X", "clip the gradient norm at X"),
                    ("--trainer.enable_progress_bar false", "no progress bar or lines"),
                    ("--seed_everything N", "the seed")]
        out = ("checkpoints", [("--checkpoint.monitor METRIC", "keep the best by METRIC (e.g. val/loss)"),
                               ("--checkpoint.save_top_k K", "how many of the best to keep"),
                               ("--checkpoint.dirpath DIR", "checkpoints in DIR itself (no run folder, no link)")])
    elif verb == "predict":
        out = ("output", [("--predictions.path FILE", "the JSON lines, written atomically (default: stdout)")])
    else:
        trainer.append(("--trainer.limit_val_batches N", "evaluate N batches only"))
        out = None
    return [("the run", run), ("task and data", task), ("trainer (Lightning's: the options people set)", trainer),
            *([out] if out else [])]


def verb_help(verb: str) -> str:
    """The short help of a trainer verb."""
    groups = sections(verb)
    column = max(len(option) for _, rows in groups for option, _ in rows) + 2
    lines = [f"usage: {USAGE[verb]}", "", DESCRIPTIONS[verb]]
    for heading, rows in groups:
        lines += ["", f"{heading}:", *(f"  {option:<{column}}{what}" for option, what in rows)]
    lines += ["", f"Options can also be set in the config. kslm {verb} --help-all: every option, Lightning's Trainer's "
                  "included."]
    return "\n".join(lines)


__all__ = ["DESCRIPTIONS", "sections", "verb_help"]
