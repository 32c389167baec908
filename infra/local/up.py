#!/usr/bin/env python
"""Start the local streamsvd topology: a Dask scheduler, workers and a Prefect server.

    python infra/local/up.py --dir run/ [--workers 2] [--no-prefect] [--ui] [--detach]

Every process listens on 127.0.0.1 and logs to ``DIR/<role>.log``. Once the workers have
joined and the Prefect API is healthy, ``DIR/topology.json`` is written and printed:

    {"dask_scheduler": "tcp://127.0.0.1:PORT", "prefect_api_url": "http://127.0.0.1:PORT/api",
     "pids": {...}, "dir": "..."}

Without ``--detach`` the script stays in the foreground and stops its children on SIGTERM or
SIGINT (Ctrl-C); it also exits (code 1) if one of them dies. With ``--detach`` it returns once
ready and the children keep running: stop them with ``python infra/local/down.py --dir DIR``.
Point streamsvd and Prefect at them with

    export DASK_SCHEDULER_ADDRESS=tcp://127.0.0.1:PORT PREFECT_API_URL=http://127.0.0.1:PORT/api
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from topology import Topology, TopologyError, start_topology


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="run directory (logs, state)")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers (default 2)")
    parser.add_argument("--no-prefect", action="store_true", help="do not start Prefect")
    parser.add_argument("--ui", action="store_true", help="serve the Prefect UI as well")
    parser.add_argument(
        "--detach", action="store_true", help="return once ready, leaving the processes running"
    )
    args = parser.parse_args(argv)

    existing = args.dir / "topology.json"
    if existing.exists() and any(Topology.load(args.dir).alive().values()):
        print(
            f"a topology recorded in {existing} is still running; run down.py first",
            file=sys.stderr,
        )
        return 1

    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    # SIGTERM during start-up is acted on once started; Ctrl-C (KeyboardInterrupt) makes
    # start_topology stop what it started.
    signal.signal(signal.SIGTERM, request_stop)
    try:
        topo = start_topology(
            args.dir, workers=args.workers, prefect=not args.no_prefect, ui=args.ui
        )
    except TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(topo.to_json(), indent=2), flush=True)
    signal.signal(signal.SIGINT, request_stop)
    if stop_requested:
        topo.stop()
        return 0
    if args.detach:
        topo._procs.clear()  # the children outlive this script; down.py stops them by pid
        return 0
    code = 0
    try:
        while not stop_requested:
            dead = [role for role, alive in topo.alive().items() if not alive]
            if dead:
                print(
                    f"error: {', '.join(dead)} exited; stopping the topology (logs in {args.dir})",
                    file=sys.stderr,
                )
                code = 1
                break
            time.sleep(0.5)
    finally:
        topo.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
