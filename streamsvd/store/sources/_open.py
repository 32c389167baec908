"""Finding sources: `open_source` (one path) and `expand_sources` (files, folders, globs)."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from streamsvd.errors import ConfigError, SourceNotFoundError, UnsupportedFormatError
from streamsvd.store.sources._base import FORMATS, Source, wrap_error
from streamsvd.store.sources._csv import CsvSource
from streamsvd.store.sources._hdf5 import Hdf5Source
from streamsvd.store.sources._npy import NpySource
from streamsvd.store.sources._parquet import ParquetSource
from streamsvd.store.sources._zarr import ZarrSource, is_zarr_dir

#: File suffix (lower case) → format.
SUFFIXES: dict[str, str] = {
    ".npy": "npy",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
}
_PARTIAL = (".tmp", ".part")
_GLOB_CHARS = frozenset("*?[")


def open_source(path: str | Path, *, format: str = "auto", dataset: str | None = None) -> Source:
    """Open a matrix source for reading in row blocks.

    Parameters
    ----------
    path : str or pathlib.Path
        A file, or a directory holding a Zarr array (or group).
    format : str, default "auto"
        One of `FORMATS`. ``"auto"`` picks the format from the suffix
        (``.npy``; ``.csv``/``.tsv``/``.txt``; ``.parquet``/``.pq``;
        ``.h5``/``.hdf5``) or, for a directory, Zarr.
    dataset : str, optional
        The dataset inside an HDF5 file, or the array inside a Zarr group.
        Optional when there is exactly one 2-D numeric one.

    Returns
    -------
    Source
        An open source (a context manager); it reads only metadata (and the
        first lines of a CSV, or the first row of a Parquet list column) until
        `Source.blocks` is iterated.

    Raises
    ------
    SourceNotFoundError
        `path` (or `dataset` inside it) does not exist.
    UnsupportedFormatError
        The format is unknown or cannot hold a numeric matrix.
    InvalidInputError
        The file is empty, unreadable, corrupt, not 2-D or not numeric.
    """
    path = Path(path).expanduser()
    if format not in FORMATS:
        raise UnsupportedFormatError(
            f"{path}: unknown format {format!r}; --format must be one of {', '.join(FORMATS)}"
        )
    if not path.exists():
        raise SourceNotFoundError(f"{path}: no such file or directory")
    fmt = _detect(path) if format == "auto" else format
    if dataset is not None and fmt not in ("hdf5", "zarr"):
        raise ConfigError(
            f"{path}: --dataset {dataset!r} applies to HDF5 files and Zarr groups only, "
            f"and this source is {fmt}: drop --dataset"
        )
    try:
        if fmt == "npy":
            return NpySource.open(path)
        if fmt == "csv":
            return CsvSource.open(path)
        if fmt == "parquet":
            return ParquetSource.open(path)
        if fmt == "hdf5":
            return Hdf5Source.open(path, dataset)
        return ZarrSource.open(path, dataset)
    except IsADirectoryError as exc:  # e.g. --format npy on a directory
        wrap_error(path, f"read it as {fmt}", exc)


def _detect(path: Path) -> str:
    if path.is_dir():
        if is_zarr_dir(path):
            return "zarr"
        raise UnsupportedFormatError(
            f"{path}: is a directory but not a Zarr array (no zarr.json, .zarray or "
            ".zgroup inside); to read every file of a landing folder, list it with "
            "expand_sources (the CLI does this for directory arguments)"
        )
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(SUFFIXES))
        raise UnsupportedFormatError(
            f"{path}: cannot tell the format from the suffix {path.suffix or '(none)'!r}; "
            f"known suffixes: {known} and Zarr directories; name the format with "
            f"--format ({', '.join(f for f in FORMATS if f != 'auto')})"
        )
    return fmt


def expand_sources(specs: Sequence[str | Path]) -> list[Path]:
    """List the source paths named by files, landing folders and glob patterns.

    Parameters
    ----------
    specs : sequence of str or pathlib.Path
        Each is a file (taken as is, whatever its suffix), a Zarr directory (one
        source), a directory (a landing folder: its regular files with a known
        suffix, not recursive, in name order) or a glob pattern (``*``, ``?``,
        ``[``; ``**`` recurses) whose matches are taken in name order. Hidden
        files and files ending in ``.tmp`` or ``.part`` (still being written) are
        skipped in folders and glob matches; so are directories that are not
        Zarr stores.

    Returns
    -------
    list of pathlib.Path
        In the order of `specs`, duplicates (same resolved path) removed,
        keeping the first.

    Raises
    ------
    SourceNotFoundError
        A spec names nothing, or a folder or pattern holds no usable file.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        for path in _expand_one(spec):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found


def _expand_one(spec: str | Path) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir() and not is_zarr_dir(path):
        try:
            entries = sorted(path.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            wrap_error(path, "list the directory", exc)
        files = [p for p in entries if p.is_file() and _wanted(p) and p.suffix.lower() in SUFFIXES]
        if not files:
            raise SourceNotFoundError(
                f"{spec}: the directory holds no file with a known suffix "
                f"({', '.join(sorted(SUFFIXES))}); hidden, .tmp and .part files are skipped"
            )
        return files
    if path.exists():
        return [path]
    if _GLOB_CHARS.isdisjoint(str(spec)):
        raise SourceNotFoundError(f"{spec}: no such file or directory")
    matches = sorted(glob.glob(os.fspath(path), recursive=True))
    files = [p for p in map(Path, matches) if _wanted(p) and (p.is_file() or is_zarr_dir(p))]
    if not files:
        raise SourceNotFoundError(
            f"{spec}: no file matches the pattern (hidden, .tmp and .part files and "
            "directories that are not Zarr stores are skipped)"
        )
    return files


def _wanted(path: Path) -> bool:
    name = path.name
    return not name.startswith(".") and not name.lower().endswith(_PARTIAL)
