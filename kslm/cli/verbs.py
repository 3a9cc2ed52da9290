"""The command lines of the verbs that run no Trainer — `kslm export`, `kslm consolidate`, `kslm serve` — and the
parser every such verb uses (kslm score's too): a mistake is one line `kslm: error: kslm VERB: … (see kslm VERB
--help)` and exit code 2 through kslm.cli, never argparse's usage dump. Each checks its options and calls the layer
that does the work (kslm.export.writer, kslm.checkpoint, kslm.serve)."""

import argparse
import sys
from typing import List

from kslm.errors import ConfigError


class VerbParser(argparse.ArgumentParser):
    def __init__(self, verb: str, description: str):
        super().__init__(prog=f"kslm {verb}", description=description)
        self.verb = verb

    def error(self, message):
        raise ConfigError(f"kslm {self.verb}: {message} (see kslm {self.verb} --help)")


def export_main(argv: List[str]) -> None:
    """`kslm export --ckpt_path X --out DIR [--overwrite]`."""
    parser = VerbParser("export", "Write a kslm checkpoint as a Hugging Face directory (config.json, "
                        "model.safetensors, tokenizer files, model card) that transformers loads.")
    parser.add_argument("--ckpt_path", required=True, help="a kslm checkpoint (.ckpt) of any task")
    parser.add_argument("--out", required=True, help="the directory to write (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists and is not empty")
    args = parser.parse_args(argv)
    from kslm.export.writer import export

    res = export(args.ckpt_path, args.out, args.overwrite)
    how = "remote code: modeling_kslm.py, needs kslm installed" if res["remote"] else "native, no remote code"
    gap = f"; logits checked against kslm: max |Δ| {res['logit_gap']:.1e}" if res.get("logit_gap") is not None else ""
    print(f"kslm: exported {res['task']} {args.ckpt_path} to {args.out} as {res['architecture']} ({how}{gap})")
    print(f"kslm: files: {', '.join(res['files'])}")


def consolidate_main(argv: List[str]) -> None:
    """`kslm consolidate SHARDED_DIR [OUT]`: a sharded (fsdp2) checkpoint folder → one kslm checkpoint file."""
    parser = VerbParser("consolidate", consolidate_main.__doc__.split(": ", 1)[1])
    parser.add_argument("checkpoint", help="a sharded checkpoint folder (e.g. checkpoints/NAME/last.ckpt under fsdp2)")
    parser.add_argument("out", nargs="?", help="the file to write (default: CHECKPOINT's name with .consolidated.ckpt)")
    args = parser.parse_args(argv)
    from kslm.checkpoint import consolidate

    print(f"kslm: wrote {consolidate(args.checkpoint, args.out)}", file=sys.stderr)


def serve_main(argv: List[str]) -> None:
    """`kslm serve --ckpt_path X | --config NBCE.yaml [--host --port …] [--model.KEY VALUE …]` (kslm.serve), or one
    line when the optional extra is missing."""
    parser = VerbParser("serve", "Serve a kslm model over HTTP (LitServe): POST /predict, GET /health, GET /info.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt_path", help="a kslm checkpoint (.ckpt) or a `kslm export` directory")
    src.add_argument("--config", help="an NBCE config (configs/nbce/*.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default: this machine only), 0.0.0.0 or ::")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch_size", type=int, default=16, help="requests batched together (1: no batching)")
    parser.add_argument("--batch_timeout", type=float, default=0.005, help="seconds a batch waits to fill")
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes (each loads the model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--max_request_bytes", type=int, default=16 << 20, help="largest request body (default 16 MiB)")
    parser.add_argument("--max_records", type=int, default=1024, help="most records in one request")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a request may wait for its answer")
    parser.add_argument("--stream", action="store_true",
                        help="language models: answer one prompt as JSON lines, {\"delta\": text} as it is generated, "
                             "then the record")
    args, rest = parser.parse_known_args(argv)
    options = _model_options(rest)
    if not 1024 <= args.port <= 65535:
        raise ConfigError(f"kslm serve: --port {args.port}: must be in 1024..65535 (field '--port')")
    for name in ("max_batch_size", "workers", "max_request_bytes", "max_records"):
        if getattr(args, name) < 1:
            raise ConfigError(f"kslm serve: --{name} must be ≥ 1, got {getattr(args, name)}")
    if args.batch_timeout < 0 or args.timeout <= 0:
        raise ConfigError("kslm serve: --batch_timeout must be ≥ 0 and --timeout > 0")
    try:
        from kslm.serve import serve
    except ImportError as exc:
        raise ConfigError(f"kslm serve needs the optional extra: pip install 'kslm[serve]' ({exc})") from None
    serve(args.ckpt_path or args.config, options, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
          batch_timeout=args.batch_timeout, workers=args.workers, device=args.device,
          max_request_bytes=args.max_request_bytes, max_records=args.max_records, timeout=args.timeout,
          stream=args.stream)


def _model_options(rest: List[str]) -> dict:
    """`--model.KEY VALUE` (or --model.KEY=VALUE): the model's run-time options (e.g. --model.max_new_tokens 32)."""
    import yaml

    options, i = {}, 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--model."):
            raise ConfigError(f"kslm serve: unrecognized argument {arg} (see kslm serve --help)")
        key, _, value = arg[len("--model."):].partition("=")
        if not _:
            if i + 1 >= len(rest):
                raise ConfigError(f"kslm serve: {arg} needs a value")
            value, i = rest[i + 1], i + 1
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            options[key] = value
        i += 1
    return options


__all__ = ["VerbParser", "export_main", "consolidate_main", "serve_main"]
