#!/usr/bin/env bash
# Install dpo-retrieval into a virtual environment, choosing the right PyTorch build first.
#   bash scripts/install.sh            # library + CLI into ${DPO_RETRIEVAL_VENV:-.venv}
#   bash scripts/install.sh --dev      # ... plus the test dependencies and the [onnx] extra (its tests run in CI)
# Without CUDA (no nvidia-smi) it installs the CPU wheel torch==2.13.0 before anything else, so the
# dependency resolver keeps it instead of pulling a multi-GB CUDA build (PyPI's Linux torch wheel bundles CUDA):
# a wheel that pip's find-links already offer (a local wheel folder) first, else PyTorch's CPU index
# (TORCH_INDEX_URL, default https://download.pytorch.org/whl/cpu). Override the version with TORCH_SPEC=...
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DPO_RETRIEVAL_VENV:-$here/.venv}"
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev,onnx]"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
fi
pip=("$venv/bin/python" -m pip install -q)
cuda=0
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && cuda=1
if [ -z "${TORCH_SPEC:-}" ]; then
    if [ "$cuda" = 1 ]; then
        TORCH_SPEC="torch"            # CUDA machine: the default (CUDA) build
    else
        TORCH_SPEC="torch==2.13.0"    # CPU machine: the CPU wheel
    fi
fi
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    if [ "$cuda" = 1 ]; then
        "${pip[@]}" "$TORCH_SPEC"
    elif "${pip[@]}" --no-index --no-deps "$TORCH_SPEC" 2>/dev/null; then
        "${pip[@]}" "$TORCH_SPEC"     # the local wheel is in: now its dependencies, from the usual indexes
    else
        "${pip[@]}" --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" "$TORCH_SPEC"
    fi
fi
"${pip[@]}" -e "$here$extras"
echo "installed dpo-retrieval into $venv (torch: $("$venv/bin/python" -c 'import torch; print(torch.__version__)'))" >&2
