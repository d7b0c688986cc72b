#!/usr/bin/env bash
# Sets up everything in .venv: the agent, the controller and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[controller,dev]'
echo "ready: .venv (run the tests with: .venv/bin/python -m pytest)"
