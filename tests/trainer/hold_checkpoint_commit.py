"""Imported by a test's gin file (`import hold_checkpoint_commit`) in a maestro-train child process, never by the
library: holds Orbax's commit of every checkpoint step >= $HOLD_CHECKPOINT_COMMIT_FROM_STEP, so that the test can
SIGKILL the process while that async save is in flight. Without that variable (the test process itself, which imports
HOLDING_MESSAGE) it changes nothing.

The commit is the atomic rename of `<step>.orbax-checkpoint-tmp` to `<step>` (orbax/checkpoint/_src/path/atomicity.py,
AtomicRenameTemporaryPath.finalize), which runs in the save's background thread after every item is written. Holding
it there leaves the most complete unfinished checkpoint a kill can leave: all files present, only the rename missing.
"""

import asyncio
import os
import sys

from orbax.checkpoint._src.path import atomicity

HOLDING_MESSAGE = "hold_checkpoint_commit: holding the commit of step"
_finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def _held_finalize(self):
    final = self.get_final()
    # Items (state/, data_iterator/, ...) are committed inside the step's tmp directory first; hold only the step.
    if final.name.isdigit() and int(final.name) >= int(os.environ["HOLD_CHECKPOINT_COMMIT_FROM_STEP"]):
        print(f"{HOLDING_MESSAGE} {final.name}", file=sys.stderr, flush=True)
        await asyncio.sleep(3600)
    return await _finalize(self)


if "HOLD_CHECKPOINT_COMMIT_FROM_STEP" in os.environ:
    atomicity.AtomicRenameTemporaryPath.finalize = _held_finalize
