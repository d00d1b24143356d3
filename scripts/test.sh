#!/usr/bin/env bash
# The test command (README and .ci/run call this): install with test extras, then run pytest.
# Real-data tests read BEIR from $DPO_RETRIEVAL_DATA (default: ../shared/data/beir when present).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/install.sh" --dev
venv="${DPO_RETRIEVAL_VENV:-$here/.venv}"
if [ -z "${DPO_RETRIEVAL_DATA:-}" ] && [ -d "$here/../shared/data/beir" ]; then
    export DPO_RETRIEVAL_DATA="$(cd "$here/../shared/data/beir" && pwd)"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$here"
exec "$venv/bin/python" -m pytest -q "$@"
