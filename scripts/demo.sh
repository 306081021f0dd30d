#!/usr/bin/env bash
# Sets everything up, then runs the main job on the bundled defaults (synthetic corpus, CPU).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec .venv/bin/maestro-data synth --size small --out corpora/synthetic_small "$@"
