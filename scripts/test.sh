#!/usr/bin/env bash
# Sets everything up, then runs the linters and the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# pytest exits 5 when it collects no test; that is a failure here too.
# Two pytest-xdist workers by default (PYTEST_WORKERS=0 runs in this process): most tests wait on single-threaded XLA
# compiles, so two of them share the 2 CI cores well. --dist loadfile keeps a file's tests (and its module fixtures,
# e.g. a tiny trained model) on one worker.
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
