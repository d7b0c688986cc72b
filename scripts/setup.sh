#!/usr/bin/env bash
# Sets up everything in .venv: the agent, the controller (with the model pipeline) and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: the CPU build. Anything that pulls an unpinned torch would fetch CUDA.
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e '.[controller,dev]'
echo "ready: .venv (run the tests with: .venv/bin/python -m pytest)"
