"""`kslm export --ckpt_path X --out DIR [--overwrite]`: no Trainer, no --config (dispatched by kslm.cli.main)."""

import argparse
from typing import List

from kslm.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2 through kslm.cli, not argparse's usage dump
        raise ConfigError(f"kslm export: {message} (see kslm export --help)")


def main(argv: List[str]) -> None:
    parser = _Parser(prog="kslm export", description="Write a kslm checkpoint as a Hugging Face directory "
                     "(config.json, model.safetensors, tokenizer files, model card) that transformers loads.")
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


__all__ = ["main"]
