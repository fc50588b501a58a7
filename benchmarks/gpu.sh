#!/usr/bin/env bash
# Run the GPU benchmark (benchmarks/gpu.py) with the JAX backend on a machine that has
# JAX with CUDA but none of this project's other dependencies.
#
#   bash benchmarks/gpu.sh [--wheels DIR] [--dry-run] [benchmarks.gpu options]
#
# First installs the wheels in DIR (default benchmarks/wheels) with pip, offline and
# without dependency resolution, as benchmarks/gpu-requirements.txt lists them.
# --dry-run installs nothing and runs on the CPU with the TensorFlow backend.
# PYTHON names the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

wheels=benchmarks/wheels
dry_run=0
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels="$2"; shift 2 ;;
        --dry-run) dry_run=1; args+=("$1"); shift ;;
        *) args+=("$1"); shift ;;
    esac
done
python="${PYTHON:-python3}"

if [ "$dry_run" = 1 ]; then
    export KERAS_BACKEND=tensorflow
else
    if [ ! -d "$wheels" ]; then
        echo "error: wheel folder $wheels not found; build it as docs/benchmarks.md describes, or pass --wheels DIR" >&2
        exit 2
    fi
    "$python" -m pip install --no-index --no-deps --find-links "$wheels" -r benchmarks/gpu-requirements.txt
    if ! "$python" -c "import PIL" 2>/dev/null; then
        "$python" -m pip install --no-index --no-deps --find-links "$wheels" pillow==13.0.0
    fi
    export KERAS_BACKEND=jax
    # Each JAX process reserves 75% of the GPU memory by default, which starves a second worker.
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m benchmarks.gpu "${args[@]}"
