#!/usr/bin/env bash
# Fetch, here (online), the wheels that `kslm fit` needs and the lent GPU machines lack (/work/.library/device/KINDS.md
# lists what they hold: lightning, torch, transformers, tokenizers, tensorboard, torchmetrics, pyyaml, pyarrow, pandas,
# fsspec, huggingface-hub, xxhash … are there; these are not), into .whl/ (git-ignored). Then name .whl in the device
# tool's carry; bench/gpu_check.sh installs them. The versions are the tested ones (constraints.txt, where it exists,
# must agree: pip refuses a conflict); the machines run CPython 3.12 on x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
constraints=()
[ -f constraints.txt ] && constraints=(-c constraints.txt)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "${constraints[@]}" \
    jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls -l .whl
