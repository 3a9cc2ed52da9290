"""Connect model and data: resolve once what both need and hand it to each (data flows one way, CLI → both).

What both sides need is the tokenizer, the label set (extraction tasks) and a window length that fits the backbone.
They are resolved from, in order of precedence:

    --ckpt_path          the checkpoint's tokenizer, labels, head and backbone (resume, validate, test, predict)
    --model.pretrained   the pretrained LM checkpoint's (or `kslm export` directory's) tokenizer; read once here
                         (kslm.hf.reader.Pretrained), and the task builds its backbone from the same object
    --model.hf_path      the Hugging Face encoder's tokenizer (its directory, or a hub name's files in the hub cache)
    --data.tokenizer     a tokenizer.json / HF directory / kslm .ckpt (its tokenizer only)
    (none)               a tokenizer trained on the training texts (cached)

and the labels from the checkpoint, else from the training data (checked against `--model.types|predicates`).
The window the data produces is checked against the backbone's `max_length` first, before any data is read.
"""

from typing import Optional

from kslm.checkpoint import Checkpoint, Payload
from kslm.data.tokenizer import fingerprint, load_tokenizer, tokenizer_from_source
from kslm.errors import CheckpointError, ConfigError
from kslm.hf.reader import Pretrained, open_pretrained


def connect(model, data, checkpoint: Optional[Checkpoint] = None, stage: str = "fit") -> None:
    """Resolve the tokenizer, labels and window for `model` (a KslmTask or NBCE) and `data`, and connect both.
    `checkpoint`: `--ckpt_path`, opened and validated once by the CLI (kslm.checkpoint.open_checkpoint); the task gets
    its payload (settings, backbone, tokenizer, labels, head), from which it builds the model Lightning restores."""
    if data is None:
        raise ConfigError("kslm needs a data module: give --data (a config's data section)")
    if not hasattr(model, "settings"):  # NBCE: the data module builds its prompts with the model's tokenizer
        data.connect(model)
        return
    payload = checkpoint.payload if checkpoint is not None else None
    path = model.hparams.get("pretrained") if payload is None else None
    pretrained = open_pretrained(path, "model.pretrained") if path else None  # read once, handed to the task
    check_window(model, data, payload or (pretrained.payload if pretrained else None))
    tokenizer = resolve_tokenizer(model, data, payload, pretrained)
    labels = None
    if hasattr(model, "label_key"):
        if payload is not None:
            labels = payload.labels
        elif stage == "fit" or not model.labels:
            labels = data.label_set()
    data.connect(tokenizer, labels if payload is not None or labels is not None else None)
    model.connect(tokenizer, labels, payload, data.predict_settings(), pretrained)


def backbone_max_length(model, payload: Optional[Payload]) -> Optional[int]:
    if payload is not None:
        return payload.max_length
    hf_path = model.hparams.get("hf_path")
    if hf_path:
        from kslm.hf.encoder import local_dir

        config = local_dir(hf_path) / "config.json"  # a hub name: its files in the hub cache
        if config.is_file():
            from kslm.io import JsonInputError, read_json

            try:
                settings = read_json(config, 16 << 20)
            except (OSError, UnicodeDecodeError, JsonInputError) as exc:
                raise ConfigError(f"{config}: unreadable ({str(exc).splitlines()[0][:200]}) (field 'model.hf_path')") \
                    from None
            return settings.get("max_position_embeddings") if isinstance(settings, dict) else None
        return None
    return model.backbone_config.max_length


def check_window(model, data, payload: Optional[Payload]) -> None:
    """The data's window (data.max_length, data.seq_len) must fit the backbone's max_length."""
    window, limit = data.window_length(), backbone_max_length(model, payload)
    if limit is not None and window > limit:
        source = "the checkpoint's backbone.max_length" if payload is not None else (
            "the Hugging Face encoder's max_position_embeddings" if model.hparams.get("hf_path")
            else "model.backbone.max_length")
        raise ConfigError(f"{data.window_option} {window} exceeds {source} {limit}; lower {data.window_option} "
                          f"or raise the backbone's max_length")


def resolve_tokenizer(model, data, payload: Optional[Payload], pretrained: Optional[Pretrained]):
    explicit = getattr(data, "tokenizer_path", None)
    kslm_specials = not hasattr(model, "label_key")  # LMs need kslm's special ids; extraction takes HF tokenizers
    for own, name in ((payload.load_tokenizer() if payload else None, "--ckpt_path"),
                      (pretrained.tokenizer if pretrained else None, f"--model.pretrained {model.hparams.get('pretrained')}")):
        if own is not None:
            if explicit and fingerprint(tokenizer_from_source(explicit, kslm_specials)) != fingerprint(own):
                raise CheckpointError(f"{explicit}: data.tokenizer differs from the tokenizer of {name}; leave "
                                      "data.tokenizer empty to use the checkpoint's")
            return own
    hf_path = model.hparams.get("hf_path")
    if hf_path:
        from kslm.hf.encoder import local_dir

        return load_tokenizer(str(local_dir(hf_path)), kslm_specials=False)
    return data.load_tokenizer()


__all__ = ["connect", "check_window", "resolve_tokenizer"]
