"""Gin for every entry point (maestro-train, maestro-demo, the benchmarks): where gin files are found, the
`--gin.NAME=VALUE` flags, and parsing that names the file or flag at fault.

Gin files are searched in the current directory, the repository root and the repository's gin/ directory. Includes
inside gin files are written from the repository root ('gin/models/tiny.gin'): gin would take a bare 'models/...' for
a Python package named `models` if one is importable. `--gin.X=Y` adds the binding `X = Y` after all files (macros
too: `--gin.TRAIN_STEPS=200`).
"""

import argparse
import os

import gin

import maestro_jax

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_SEARCH_DIRS = (REPO_ROOT, os.path.join(REPO_ROOT, "gin"))


class GinConfigError(ValueError):
    """A gin file or binding could not be applied."""


def parse_gin_flags(argv: list[str], *, prog: str, description: str) -> tuple[list[str], list[str]]:
    """(gin files, gin bindings) from a command line of `--gin_file=FILE` (at least one) and `--gin.NAME=VALUE`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(rest, parser)
    if not args.gin_file:
        parser.error("give at least one --gin_file (e.g. --gin_file=runs/cpu_debug.gin plus model/objective/data)")
    return args.gin_file, bindings


def gin_bindings(flags: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--gin.NAME=VALUE` flags -> gin bindings `NAME = VALUE`; anything else is a usage error of `parser`."""
    bindings = []
    for flag in flags:
        if not flag.startswith("--gin.") or "=" not in flag:
            parser.error(f"unrecognised argument {flag!r}; expected --gin.NAME=VALUE")
        name, value = flag[len("--gin.") :].split("=", 1)
        bindings.append(f"{name} = {value}")
    return bindings


def resolve_gin_file(path: str) -> str:
    """`path` as given if it exists, else under the repository root or its gin/ directory (absolute)."""
    for directory in ("", *GIN_SEARCH_DIRS):
        candidate = os.path.join(directory, path)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise GinConfigError(
        f"gin file {path!r} not found in the current directory, {GIN_SEARCH_DIRS[0]} or {GIN_SEARCH_DIRS[1]}; "
        "pass a path such as gin/experiments/tiny_maestro.gin."
    )


def configure_gin(gin_files: list[str], bindings: list[str]) -> None:
    """Parses files then bindings; an unknown configurable or parameter names the binding and where it came from."""
    maestro_jax.register_configurables()
    for directory in GIN_SEARCH_DIRS:
        gin.add_config_file_search_path(directory)
    for path in gin_files:
        try:
            gin.parse_config_file(resolve_gin_file(path))
        except (ValueError, KeyError, SyntaxError) as error:
            raise GinConfigError(f"gin file {path!r}: {error}") from error
    for binding in bindings:
        try:
            gin.parse_config(binding)
        except (ValueError, KeyError, SyntaxError) as error:
            flag = "--gin." + binding.replace(" = ", "=", 1)
            raise GinConfigError(f"command-line binding {flag!r}: {error}") from error
    gin.finalize()


def query_value(binding: str):
    """The value bound to `binding` ("fn.param") in the current config, with macros (`%NAME`, chains too) resolved;
    gin.query_parameter alone returns a macro reference."""
    value = gin.query_parameter(binding)
    while isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro":
        value = gin.query_parameter("%" + value.scoped_selector.split("/")[0])
    return value
