"""What this machine charges for memory a process touches for the first time.

Run::

    .venv/bin/python benchmarks/first_touch.py [--mb 480] [--repeat 3]

A fit writes ``U_raw`` (1,000,000 × 60 float64 = 480 MB on the fit benchmark)
into new page-cache pages, and a new process grows its own memory; the floor of
``benchmarks/fit.py`` is the fastest of four passes in one process (its memory
warm by then) and writes nothing. This script times, in a new process each
round (as a fit meets it), filling ``--mb`` of new anonymous memory twice (the
second time reuses the pages the first freed) and writing ``--mb`` to a new
file twice (the second file reuses the page-cache pages of the first, deleted).
On a machine whose memory is already backed, each first time costs about what a
memset or memcpy of that size costs (0.05-0.1 s for 480 MB); in a VM whose host
hands out guest memory lazily it costs much more, except for memory freed a
moment ago (a round that follows another closely can find its pages still
backed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DATA,
    child_argv,
    machine_note,
    mark_measured,
    markdown_table,
    report,
    run_child,
    timed,
)


def one_round(n_values: int, folder: Path) -> list[float]:
    """Seconds: new memory, the same again, a new file, the same again."""
    seconds = []
    for _ in range(2):
        block, elapsed = timed(lambda: np.ones(n_values))
        seconds.append(elapsed)
        del block  # freed: the second fill reuses its pages
    data = np.random.default_rng(0).standard_normal(n_values)
    for i in range(2):
        path = folder / f"first-touch-{i}.bin"
        _, elapsed = timed(lambda path=path: data.tofile(path))
        seconds.append(elapsed)
        path.unlink()  # the second file reuses its page-cache pages
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=480, help="megabytes to touch (10⁶ bytes)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, each in a new process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = BENCH_DATA / "first-touch"
    n_values = args.mb * 1_000_000 // 8
    if args.child:
        seconds = one_round(n_values, folder)
        mark_measured()
        report({"seconds": seconds})
        return
    folder.mkdir(parents=True, exist_ok=True)
    print(f"# first touch of {args.mb} MB, {args.repeat} rounds, each in a new process")
    print(machine_note(), flush=True)
    rows = []
    for round_no in range(args.repeat):
        argv = child_argv(__file__, "round", ["--mb", str(args.mb)])
        seconds = run_child("round", argv).result["seconds"]
        rows.append([f"{round_no + 1}", *(f"{t:.3f}" for t in seconds)])
    os.rmdir(folder)
    headers = [
        "round",
        "new memory, 1st (s)",
        "same again (s)",
        "new file, 1st (s)",
        "same again (s)",
    ]
    print()
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
