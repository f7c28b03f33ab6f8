#!/usr/bin/env bash
# Set up a virtualenv and run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
.venv/bin/ruff check edgekit convert bench tests
.venv/bin/pytest -q "$@"
