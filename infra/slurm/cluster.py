#!/usr/bin/env python
"""Start a Dask cluster on Slurm for streamsvd (run on a login node, inside the venv).

    pip install dask-jobqueue
    python infra/slurm/cluster.py [--config infra/slurm/jobqueue.yaml] [--jobs 4]
    # in another shell, with the address printed above:
    streamsvd fit /scratch/store --rank 50 --scheduler tcp://10.0.0.5:8786

The scheduler runs in this process: keep it running while jobs use the cluster; Ctrl-C
cancels the Slurm jobs. ``--print-job-script`` shows the batch script and submits nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=Path(__file__).with_name("jobqueue.yaml"), help="YAML"
    )
    parser.add_argument("--jobs", type=int, help="Slurm jobs to request (default: the YAML's)")
    parser.add_argument("--print-job-script", action="store_true", help="print it and exit")
    args = parser.parse_args(argv)

    with open(args.config) as f:
        settings = yaml.safe_load(f)
    config = dict(settings["cluster"])
    jobs = args.jobs if args.jobs is not None else int(settings.get("jobs", 1))

    from dask_jobqueue import SLURMCluster  # imported late: only needed on the login node

    cluster = SLURMCluster(**config)
    try:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=jobs)
        print(f"dashboard: {cluster.dashboard_link}", file=sys.stderr)
        print(f"requested {jobs} Slurm jobs; Ctrl-C to stop", file=sys.stderr)
        print(cluster.scheduler_address, flush=True)  # for `streamsvd fit --scheduler`
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
