#!/usr/bin/env bash
# Sets everything up, then runs the main job on the bundled defaults: builds the small synthetic corpus (cached),
# pretrains a small MAESTRO model, evaluates it, exports it and prints a summary (about 20 minutes on 2 CPU cores).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec .venv/bin/maestro-demo "$@"
