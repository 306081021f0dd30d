"""maestro-train: `maestro-train --gin_file=FILE [--gin_file=...] [--gin.NAME=VALUE ...]`.

Gin files are searched in the current directory, the repository root and the repository's gin/ directory
(maestro_jax/gin_utils.py says how files and `--gin.X=Y` bindings are read). Exit status: 0 once train.train_steps
are done, `preemption_exit_code.code` (42) after a preemption save (launchers restart on it), 2 for a bad config.
"""

import sys

from maestro_jax import distributed, metrics, train
from maestro_jax.gin_utils import GinConfigError, configure_gin, parse_gin_flags, query_value


def parse_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(gin files, gin bindings) from the command line; `--gin.NAME=VALUE` becomes the binding `NAME = VALUE`."""
    return parse_gin_flags(argv, prog="maestro-train", description=__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    metrics.log_to_stderr()
    gin_files, bindings = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        configure_gin(gin_files, bindings)
    except GinConfigError as error:
        print(f"maestro-train: {error}", file=sys.stderr)
        return 2
    preempted_exit_code = train.preemption_exit_code()  # checked before a long run, used after it
    distributed.initialize_distributed()
    state = train.train()
    if int(state.step) < query_value("train.train_steps"):  # train() only returns early after a preemption save
        return preempted_exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
