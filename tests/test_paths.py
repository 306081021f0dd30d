"""maestro_jax.paths: a URL stays a URL, a local path becomes absolute, and no module that takes a model directory,
checkpoint, export or tokenizer path touches files or makes paths absolute except through it (the gs:// round trip
itself is tests/trainer/test_remote_model_dir.py)."""

import ast
import os
import pathlib

import pytest

from maestro_jax import paths

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "maestro_jax"
PATH_MODULES = ("checkpoints", "train", "metrics", "export", "evaluation", "warm_start", "inference", "data/tokenizer")


def test_resolve_leaves_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.resolve("gs://bucket/x") == "gs://bucket/x"
    assert paths.resolve("s3://bucket/x/") == "s3://bucket/x/"
    assert paths.resolve("runs/x") == str(tmp_path / "runs" / "x")
    assert os.path.join(paths.resolve("gs://bucket/x"), "checkpoints") == "gs://bucket/x/checkpoints"
    assert str(paths.as_path("gs://bucket/x") / "metrics.jsonl") == "gs://bucket/x/metrics.jsonl"
    assert paths.is_url("gs://bucket/x") and not paths.is_url("/tmp/gs:/bucket")
    with pytest.raises(ValueError, match="'memory://x' has a URL scheme that etils.epath"):
        paths.resolve("memory://x")


@pytest.mark.parametrize("module", PATH_MODULES)
def test_path_modules_leave_paths_to_the_helper(module):
    """Only `paths` may turn a path absolute or touch files: os / os.path / shutil file calls and open() know only the
    local disk (metrics.py alone opens a file, its local metrics.jsonl; os.path.join and basename are plain text)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    text_only = {"join", "basename", "dirname", "splitext", "fspath", "environ", "getenv", "getpid"}
    offending = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and ast.unparse(func.value) in ("os", "os.path", "shutil"):
            if func.attr not in text_only:
                offending.append(ast.unparse(func))
        elif isinstance(func, ast.Name) and func.id == "open" and module != "metrics":
            offending.append("open")
    assert offending == [], f"maestro_jax/{module}.py calls {offending}; go through maestro_jax.paths"
