#!/usr/bin/env bash
# Sets everything up, then runs the main job on the bundled defaults (gin/experiments/demo.gin): builds the medium
# synthetic corpus (cached), trains the toy Conformer with a pruned RNN-T and an auxiliary CTC loss on its paired
# speech, evaluates it (also on unseen voices and words), exports it and prints a summary (about 19 minutes on
# 2 CPU cores from a fresh clone, set-up included).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec .venv/bin/maestro-demo "$@"
