"""Zarr arrays (v2 or v3) on a local directory, read in row slices."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from streamsvd.errors import InvalidInputError, SourceNotFoundError
from streamsvd.store.sources._base import (
    NUMERIC_KINDS,
    Block,
    Source,
    native_numeric_dtype,
    require_2d,
    slice_blocks,
    wrap_error,
)

_MAX_LISTED = 20


def is_zarr_dir(path: Path) -> bool:
    """Whether `path` is a directory holding Zarr metadata (an array or a group)."""
    return path.is_dir() and any(
        (path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup")
    )


class ZarrSource(Source):
    """A 2-D numeric Zarr array, read as row slices ``arr[a:b]``.

    `path` is the array's directory, or a group's directory with `dataset` the
    array's path inside it (optional when the group holds exactly one 2-D
    numeric array). Memory is one block plus the chunks it touches; blocks
    aligned with the array's row chunks read each chunk once.
    """

    format = "zarr"

    def __init__(self, path: Path, array: Any, dtype: np.dtype, dataset: str | None) -> None:
        self.path = path
        self._array = array
        self.dataset = dataset
        self.n_rows, self.n_cols = (int(n) for n in array.shape)
        self.dtype = dtype

    @classmethod
    def open(cls, path: Path, dataset: str | None = None) -> ZarrSource:
        """Open the array at `path` (or `dataset` inside the group at `path`)."""
        try:
            node = zarr.open(store=str(path), mode="r")
        except Exception as exc:  # zarr raises many types for unreadable metadata
            wrap_error(path, "read it as a Zarr array", exc)
        array, name = _find_array(path, node, dataset)
        what = "the array" if name is None else f"array {name!r}"
        dtype = native_numeric_dtype(np.dtype(array.dtype), path, what)
        require_2d(tuple(array.shape), path, what)
        return cls(path, array, dtype, name)

    def _blocks(self, max_rows: int) -> Iterator[Block]:
        array = self._array

        def read(start: int, stop: int) -> np.ndarray:
            try:
                return np.asarray(array[start:stop])
            except Exception as exc:  # codec and store errors have no common base
                wrap_error(self.path, f"read rows {start}..{stop - 1}", exc)

        return slice_blocks(self.n_rows or 0, max_rows, read, self.dtype)

    def _close(self) -> None:
        self._array = None


def _find_array(path: Path, node: Any, dataset: str | None) -> tuple[Any, str | None]:
    if isinstance(node, zarr.Array):
        if dataset not in (None, "", "/"):
            raise InvalidInputError(
                f"{path}: is a Zarr array, not a group, so it has no array {dataset!r} "
                "inside: drop --dataset"
            )
        return node, None
    arrays = [(name, arr) for name, arr in node.members(max_depth=None) if _is_array(arr)]
    if dataset is not None:
        key = dataset.strip("/")
        for name, arr in arrays:
            if name == key:
                return arr, name
        raise SourceNotFoundError(
            f"{path}: the Zarr group has no array {dataset!r}; arrays present: "
            f"{_listing(arrays)}; choose one with --dataset"
        )
    matrices = [
        (name, arr)
        for name, arr in arrays
        if len(arr.shape) == 2 and np.dtype(arr.dtype).kind in NUMERIC_KINDS
    ]
    if len(matrices) == 1:
        return matrices[0][1], matrices[0][0]
    if not matrices:
        raise InvalidInputError(
            f"{path}: the Zarr group holds no 2-D numeric array (arrays present: "
            f"{_listing(arrays)}); a matrix must be a 2-D numeric array"
        )
    raise InvalidInputError(
        f"{path}: the Zarr group holds {len(matrices)} 2-D numeric arrays "
        f"({_listing(matrices)}); choose one with --dataset"
    )


def _is_array(node: Any) -> bool:
    return isinstance(node, zarr.Array)


def _listing(arrays: list[tuple[str, Any]]) -> str:
    if not arrays:
        return "none"
    items = [f"{name} {tuple(arr.shape)} {arr.dtype}" for name, arr in arrays[:_MAX_LISTED]]
    more = len(arrays) - _MAX_LISTED
    return ", ".join(items) + (f", … ({more} more)" if more > 0 else "")
