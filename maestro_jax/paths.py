"""The one path helper for model directories, checkpoints, operative configs, metrics, exports and tokenizers: a local
path and a URL (gs://, s3://, ... : the schemes etils.epath has a filesystem for) take the same code path.

Built on etils.epath, the path library Orbax itself uses: with TensorFlow installed (as here) epath reaches gs:// and
s3:// through tf.io.gfile, else through fsspec (gcsfs, s3fs); `EPATH_USE_TF=false` picks fsspec. A URL is never made
absolute (`os.path.abspath("gs://b/x")` is the local directory `$PWD/gs:/b/x`), and its parts join with `os.path.join`
as plain text ("gs://b/x" + "checkpoints" -> "gs://b/x/checkpoints"). Needs no gin, seqio or TensorFlow import of its
own, so that `export.load` can use it.
"""

import os
import re

from etils import epath

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str | os.PathLike) -> bool:
    """True for "scheme://..." (a remote filesystem), False for a local path."""
    return bool(_URL.match(os.fspath(path)))


def resolve(path: str | os.PathLike) -> str:
    """A local path made absolute, a URL unchanged; ValueError for a URL scheme that epath has no filesystem for."""
    path = os.fspath(path)
    if not is_url(path):
        return os.path.abspath(path)
    try:
        epath.Path(path)
    except KeyError:  # epath's lookup of the scheme's path class
        raise ValueError(
            f"{path!r} has a URL scheme that etils.epath (maestro_jax's and Orbax's path library) cannot open; use "
            "gs://, s3://, az://, hf:// or a local path."
        ) from None
    return path


def as_path(path: str | os.PathLike) -> epath.Path:
    """`resolve(path)` as an epath.Path (open, read_text, write_bytes, exists, iterdir, rmtree, ...)."""
    return epath.Path(resolve(path))


def makedirs(path: str | os.PathLike) -> None:
    """Creates `path` and its parents if missing (an object store has no real directories: its client decides)."""
    as_path(path).mkdir(parents=True, exist_ok=True)
