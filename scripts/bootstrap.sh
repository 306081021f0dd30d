#!/usr/bin/env bash
# Creates or reuses .venv in the repository root and installs what the project needs (espeak-ng included).
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it skips what is already there).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "maestro_jax needs Python 3.11; found $("$python_bin" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[bootstrap] installing espeak-ng with apt-get"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng >/dev/null
  else
    echo "espeak-ng is missing and this user cannot install it. Run: sudo apt-get install -y espeak-ng" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$python_bin" -m venv .venv
fi
stamp=".venv/.installed-$(cat setup.py | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing maestro-jax[test] into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
