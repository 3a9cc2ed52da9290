#!/usr/bin/env bash
# The GPU check in one command (bench/README.md, "The GPU check"): bash bench/gpu_check.sh [OUT] [gpu_check.py options]
# OUT defaults to $OUT, the folder a lent machine returns. Everything goes there as it is measured: gpu_check.json,
# gpu_check.md, gpu_check.log (this output), base_1024.json, base_2048.json, fit.json, fit.log.
# If .whl/ holds wheels (bench/gpu_wheels.sh; name .whl in the device tool's carry) and a package of `kslm fit`'s that
# the lent machines lack (jsonargparse, datasets, …) is missing, they are installed first into a folder of their own.
# No `set -e`: a failing step is reported and the check still runs; the exit status is gpu_check.py's.
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out=$1; shift; fi
if [ -z "$out" ]; then echo "usage: bash bench/gpu_check.sh OUT [options] (or set OUT)" >&2; exit 2; fi
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
py=$(command -v python3 || command -v python)
log=$out/gpu_check.log
echo "gpu_check.sh: $(date -u +%FT%TZ) on $(hostname), $("$py" --version 2>&1), repo $(pwd)" | tee "$log"
need="import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('jsonargparse', 'docstring_parser', 'typeshed_client', 'datasets', 'dill', 'multiprocess')))"
if compgen -G ".whl/*.whl" >/dev/null && ! "$py" -c "$need" 2>/dev/null; then  # only where some are missing
    site=${TMPDIR:-/tmp}/kslm-gpu-check-site
    if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl >>"$log" 2>&1; then
        export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
        echo "gpu_check.sh: installed $(ls .whl/*.whl | wc -l) wheels from .whl/ into $site" | tee -a "$log"
    else
        echo "gpu_check.sh: installing .whl/ failed (gpu_check.log); the fit phase will say what is missing" | tee -a "$log"
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$py" bench/gpu_check.py --out "$out" "$@" 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
