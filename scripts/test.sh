#!/usr/bin/env bash
# Sets everything up, then runs the linters and the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# pytest exits 5 when it collects no test; that is a failure here too.
exec .venv/bin/python -m pytest -q "$@"
