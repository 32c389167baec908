"""Content ids of sources: xxh3-128 over the bytes, streamed."""

from __future__ import annotations

import os
from pathlib import Path

import xxhash

from streamsvd.errors import SourceNotFoundError
from streamsvd.store.sources._base import wrap_error

_BUFFER_BYTES = 8 << 20


def content_hash(path: str | Path, *, dataset: str | None = None) -> str:
    """Stable id of a source's content: ``"xxh3_128:<32 hex digits>"``.

    Parameters
    ----------
    path : str or pathlib.Path
        A file (the hash is over its bytes) or a directory such as a Zarr store
        (over its files' relative POSIX paths, sizes and bytes, in sorted order).
    dataset : str, optional
        The dataset or array inside the file; mixed into the hash so two
        datasets of one file get two ids.

    Returns
    -------
    str
        The hash. It depends only on the bytes (and names, for a directory),
        not on times or permissions. One pass, memory one 8 MiB buffer.

    Raises
    ------
    SourceNotFoundError
        `path` does not exist.
    InvalidInputError
        `path` cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise SourceNotFoundError(f"{path}: no such file or directory")
    digest = xxhash.xxh3_128()
    buffer = memoryview(bytearray(_BUFFER_BYTES))
    try:
        if path.is_dir():
            for rel, file in _files(path):
                digest.update(
                    b"%s\0%d\0" % (rel.encode("utf-8", "surrogateescape"), file.stat().st_size)
                )
                _update(digest, file, buffer)
        else:
            _update(digest, path, buffer)
    except OSError as exc:
        wrap_error(path, "read it to hash its content", exc)
    if dataset is not None:
        digest.update(b"\0dataset\0" + dataset.encode("utf-8"))
    return "xxh3_128:" + digest.hexdigest()


def _files(root: Path) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            file = Path(dirpath, name)
            out.append((file.relative_to(root).as_posix(), file))
    out.sort()
    return out


def _update(digest: xxhash.xxh3_128, path: Path, buffer: memoryview) -> None:
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(buffer[:n])
