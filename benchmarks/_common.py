"""Shared helpers of the benchmarks: child processes, peak memory, test data, tables.

Every measured thing runs in its own child process (the benchmark script run
again with ``--child NAME``) so that its peak memory is its own. The parent
polls the child's whole process tree (the child and, for an embedded
LocalCluster, its nanny and worker processes) every 50 ms with psutil and
keeps two peaks:

* ``rss``: the sum of the resident set sizes. It counts file-backed pages
  that a process maps (a memory-mapped ``.npy`` that was read counts in full
  while it stays mapped, although the kernel can drop those pages at any time)
  and counts shared library pages once per process;
* ``anon``: the sum of ``rss - shared`` (anonymous memory: what the process
  allocated itself and cannot give back without swap).

The child prints ``@@MEASURED`` when its measured part ends (what follows,
such as checking the error, does not count in the peaks) and its result as
one ``@@RESULT {json}`` line. The child's own ``VmHWM`` at that point is
reported too, as a check on the polling (it catches peaks shorter than 50 ms,
for the child process alone; ``ru_maxrss`` would not do: Linux carries it
over ``execve`` from the parent).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

MB = 1e6
MIB = 2**20
POLL_SECONDS = 0.05
MEASURED = "@@MEASURED"
RESULT = "@@RESULT "

#: Where benchmark data goes (git-ignored).
BENCH_DATA = Path(__file__).resolve().parent.parent / "bench-data"


# --------------------------------------------------------------------------- child side


def vm_hwm_mib() -> float:
    """Peak resident set size of this process so far, from ``VmHWM``.

    Not ``ru_maxrss``: Linux keeps that across ``execve``, so a child started
    by a large parent reports the parent's size.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MIB
    return 0.0


def mark_measured() -> None:
    """Tell the parent that the measured part of this child is over (with ``VmHWM``)."""
    print(f"{MEASURED} {vm_hwm_mib():.1f}", flush=True)


def report(result: dict[str, Any]) -> None:
    """Send this child's result to the parent."""
    print(RESULT + json.dumps(result), flush=True)


# -------------------------------------------------------------------------- parent side


@dataclass
class Measured:
    """A child's result and the peaks of its process tree while it was measured."""

    name: str
    result: dict[str, Any]
    peak_rss_mib: float
    peak_anon_mib: float
    peak_processes: int
    child_hwm_mib: float = 0.0
    log: list[str] = field(default_factory=list)

    @property
    def rss(self) -> float:
        """Peak RSS: the polled tree peak, or the child's own ``VmHWM`` if higher."""
        return max(self.peak_rss_mib, self.child_hwm_mib)


def _tree_memory(root: psutil.Process) -> tuple[int, int, int]:
    procs = [root]
    with contextlib.suppress(psutil.Error):
        procs += root.children(recursive=True)
    rss = anon = count = 0
    for proc in procs:
        try:
            info = proc.memory_info()
        except psutil.Error:
            continue
        rss += info.rss
        anon += info.rss - info.shared
        count += 1
    return rss, anon, count


def run_child(
    name: str,
    argv: Sequence[str],
    *,
    echo: bool = True,
    env: dict[str, str] | None = None,
    before: Callable[[], object] | None = None,
) -> Measured:
    """Run ``python argv...`` as a child; poll its tree's memory until ``@@MEASURED``.

    Lines the child prints other than the protocol lines are echoed to stderr
    (prefixed with the name) when `echo` is true, and kept in ``Measured.log``.
    """
    cmd = [sys.executable, *argv]
    if before is not None:
        before()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        bufsize=1,
        env={**os.environ, **(env or {})},
    )
    done = threading.Event()
    lines: list[str] = []
    result: dict[str, Any] = {}
    hwm: list[float] = [0.0]

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(MEASURED):
                hwm[0] = float(line.split()[1])
                done.set()
            elif line.startswith(RESULT):
                result.update(json.loads(line[len(RESULT) :]))
            else:
                lines.append(line)
                if echo:
                    print(f"  [{name}] {line}", file=sys.stderr, flush=True)
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    peak_rss = peak_anon = peak_count = 0
    while not done.is_set() and proc.poll() is None:
        rss, anon, count = _tree_memory(root)
        peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
        peak_count = max(peak_count, count)
        done.wait(POLL_SECONDS)
    code = proc.wait()
    reader.join()
    if code != 0 or not result:
        tail = "\n".join(lines[-20:])
        raise RuntimeError(f"child {name!r} failed (exit code {code}):\n{tail}")
    return Measured(name, result, peak_rss / MIB, peak_anon / MIB, peak_count, hwm[0], lines)


def child_argv(script: str, name: str, args: Sequence[str]) -> list[str]:
    """Arguments to run `script` again as the child `name`, with `args` passed on."""
    return [script, "--child", name, *args]


# ------------------------------------------------------------------------------ data


def steep_spectrum(rows: int, n_signal: int = 100) -> np.ndarray:
    """σ_i = 10·√m·0.9^i for i < n_signal (the fit benchmark's spectrum)."""
    return 10.0 * np.sqrt(rows) * 0.9 ** np.arange(n_signal)


def write_npy(
    path: Path,
    rows: int,
    cols: int,
    *,
    seed: int = 0,
    noise: float = 0.01,
    n_signal: int = 100,
    block_rows: int = 65536,
) -> None:
    """Write a float32 ``.npy`` of ``G·diag(σ)·Vᵀ/√m + noise``, block by block.

    ``G`` is m×r standard Gaussian, ``V`` an n×r random orthonormal matrix and
    ``σ`` :func:`steep_spectrum`, so the singular values are about ``σ_i``
    (a Gaussian column has norm about √m); ``noise`` is the standard deviation
    of i.i.d. Gaussian noise. Memory: one block, never the whole matrix.
    """
    rng = np.random.default_rng(seed)
    r = min(n_signal, cols)
    v, _ = np.linalg.qr(rng.standard_normal((cols, r)))
    factor = ((steep_spectrum(rows, r) / np.sqrt(rows))[:, None] * v.T).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, cols))
    for start in range(0, rows, block_rows):
        stop = min(rows, start + block_rows)
        g = rng.standard_normal((stop - start, r), dtype=np.float32)
        block = g @ factor
        block += noise * rng.standard_normal((stop - start, cols), dtype=np.float32)
        out[start:stop] = block
    out.flush()
    del out
    tmp.replace(path)


def remove(path: Path) -> None:
    """Delete a file or directory tree if it exists, with a store's lock files.

    The store's writer lock lives next to it (``.NAME.streamsvd.lock`` and
    ``.lock.pid``) and outlives the store.
    """
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    for lock in path.parent.glob(f".{path.name}.streamsvd.lock*"):
        lock.unlink(missing_ok=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


# ----------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [
        all(_looks_numeric(r[i]) for r in cells) and bool(cells) for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(
        "-" * (w + 1) + ":" if num else "-" * (w + 2)
        for w, num in zip(widths, numeric, strict=True)
    )
    return "\n".join([line(headers), sep + "|", *(line(r) for r in cells)])


def _looks_numeric(text: str) -> bool:
    t = text.replace("×", "").replace("x", "").replace(",", "").strip()
    try:
        float(t)
    except ValueError:
        return text in ("", "–", "n/a")
    return True


def machine_note() -> str:
    """CPU count, RAM and load: the context of the numbers."""
    load = os.getloadavg()
    mem = psutil.virtual_memory()
    return (
        f"{os.cpu_count()} cores, {mem.total / 2**30:.0f} GiB RAM, "
        f"load average {load[0]:.1f} at start; numpy {np.__version__}"
    )
