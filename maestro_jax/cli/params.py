"""`maestro-params`: parameter count of each model config by tower, from abstract shapes (nothing is allocated)."""

import argparse
from pathlib import Path

from maestro_jax.models.sizes import MODEL_GIN_DIR, TOWERS, count_parameters, model_config_from_gin


def format_table(counts: dict[str, dict[str, int]]) -> str:
    """A markdown table: one row per tower, one column per config, counts in millions (exact count for < 1M)."""
    names = list(counts)
    rows = [*TOWERS, "speech+shared", "total", "frozen"]

    def cell(n: int) -> str:
        return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n:,}"

    lines = ["| tower | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {row} | " + " | ".join(cell(counts[name][row]) for name in names) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--gin_files",
        nargs="+",
        default=[str(MODEL_GIN_DIR / f"{name}.gin") for name in ("tiny", "small", "maestro")],
        help="model gin files to count (default: gin/models/{tiny,small,maestro}.gin)",
    )
    args = parser.parse_args(argv)
    counts = {}
    for path in args.gin_files:
        if not Path(path).is_file():
            parser.error(f"model gin file {path} does not exist; pass existing files with --gin_files.")
        counts[Path(path).stem] = count_parameters(model_config_from_gin(path))
    print(format_table(counts))


if __name__ == "__main__":
    main()
