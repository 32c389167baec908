#!/usr/bin/env python
"""Stop a local topology started with ``up.py --detach``.

    python infra/local/down.py --dir run/

Reads ``DIR/topology.json`` and stops every recorded process (and its process group):
SIGTERM, then SIGKILL after 10 s. Idempotent: a missing file or processes already gone
are not errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from topology import TOPOLOGY_FILE, Topology


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="run directory given to up.py")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds before SIGKILL")
    args = parser.parse_args(argv)
    if not (args.dir / TOPOLOGY_FILE).exists():
        print(f"nothing to stop: no {args.dir / TOPOLOGY_FILE}")
        return 0
    topo = Topology.load(args.dir)
    running = [role for role, alive in topo.alive().items() if alive]
    topo.stop(grace=args.grace)
    left = [role for role, alive in topo.alive().items() if alive]
    if left:
        print(f"error: still running: {', '.join(left)}", file=sys.stderr)
        return 1
    print(f"stopped: {', '.join(running) or 'nothing was running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
