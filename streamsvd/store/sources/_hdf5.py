"""HDF5 files: one 2-D numeric dataset, read in row slices with h5py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

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


class Hdf5Source(Source):
    """A 2-D numeric dataset in an HDF5 file, read as row slices ``ds[a:b]``.

    Memory is one block plus HDF5's chunk cache. Without `dataset`, the file
    must hold exactly one 2-D numeric dataset.
    """

    format = "hdf5"

    def __init__(self, path: Path, h5file: Any, dataset: Any, dtype: np.dtype) -> None:
        self.path = path
        self._file = h5file
        self._dataset = dataset
        self.dataset = str(dataset.name)
        self.n_rows, self.n_cols = (int(n) for n in dataset.shape)
        self.dtype = dtype

    @classmethod
    def open(cls, path: Path, dataset: str | None = None) -> Hdf5Source:
        """Open `path` and find the dataset (given, or the only 2-D numeric one)."""
        try:
            h5file = h5py.File(path, "r")
        except OSError as exc:
            wrap_error(path, "read it as an HDF5 file", exc)
        try:
            ds = _find_dataset(path, h5file, dataset)
            what = f"dataset {ds.name!r}"
            dtype = native_numeric_dtype(ds.dtype, path, what)
            require_2d(ds.shape, path, what)
            return cls(path, h5file, ds, dtype)
        except BaseException:
            h5file.close()
            raise

    def _blocks(self, max_rows: int) -> Iterator[Block]:
        ds = self._dataset

        def read(start: int, stop: int) -> np.ndarray:
            try:
                return np.asarray(ds[start:stop])
            except (OSError, ValueError, RuntimeError) as exc:
                wrap_error(self.path, f"read rows {start}..{stop - 1} of {self.dataset!r}", exc)

        return slice_blocks(self.n_rows or 0, max_rows, read, self.dtype)

    def _close(self) -> None:
        self._file.close()


def _datasets(h5file: Any) -> list[Any]:
    found: list[Any] = []

    def visit(_name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(obj)

    h5file.visititems(visit)
    return found


def _listing(datasets: list[Any]) -> str:
    if not datasets:
        return "none"
    items = [f"{ds.name} {tuple(ds.shape)} {ds.dtype}" for ds in datasets[:_MAX_LISTED]]
    more = len(datasets) - _MAX_LISTED
    return ", ".join(items) + (f", … ({more} more)" if more > 0 else "")


def _find_dataset(path: Path, h5file: Any, dataset: str | None) -> Any:
    if dataset is not None:
        obj = h5file.get(dataset)
        if isinstance(obj, h5py.Dataset):
            return obj
        kind = "is a group, not a dataset" if obj is not None else "does not exist"
        raise SourceNotFoundError(
            f"{path}: {dataset!r} {kind}; datasets present: {_listing(_datasets(h5file))}; "
            "choose one with --dataset"
        )
    datasets = _datasets(h5file)
    matrices = [ds for ds in datasets if ds.ndim == 2 and ds.dtype.kind in NUMERIC_KINDS]
    if len(matrices) == 1:
        return matrices[0]
    if not matrices:
        raise InvalidInputError(
            f"{path}: no 2-D numeric dataset in the file (datasets present: "
            f"{_listing(datasets)}); a matrix must be a 2-D numeric dataset: pick one "
            "with --dataset or reshape the data"
        )
    raise InvalidInputError(
        f"{path}: {len(matrices)} 2-D numeric datasets ({_listing(matrices)}); choose one "
        "with --dataset"
    )
