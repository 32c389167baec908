"""``python -m flows``: run a flow once, serve the deployments, or run the demo.

python -m flows run pipeline --config config/demo.yaml
python -m flows serve --config config/cluster.example.yaml
python -m flows demo --config config/demo.yaml
"""

from __future__ import annotations

import argparse
import os
import sys

# Before Prefect is imported: no analytics offline, and Dask's logs in the run logs.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "dask,distributed,streamsvd")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one flow now (no server needed)")
    run.add_argument("flow", choices=["ingest", "fit", "update", "pipeline", "refit"])
    run.add_argument("--config", default=None)
    serve = sub.add_parser("serve", help="serve the deployments with their cron schedules")
    serve.add_argument("--config", required=True)
    serve.add_argument("--no-schedules", action="store_true", help="serve without schedules")
    demo = sub.add_parser("demo", help="generate data and run the pipeline end to end")
    demo.add_argument("--config", default="config/demo.yaml")
    args = parser.parse_args(argv)

    from streamsvd.errors import StreamSVDError

    try:
        if args.command == "run":
            from flows import pipeline

            flows = {
                "ingest": pipeline.ingest_flow,
                "fit": pipeline.fit_flow,
                "update": pipeline.update_flow,
                "pipeline": pipeline.pipeline_flow,
                "refit": pipeline.refit_flow,
            }
            flows[args.flow](config=args.config)
        elif args.command == "serve":
            from flows.serve import serve

            serve(args.config, schedules=not args.no_schedules)
        else:
            import logging

            from flows.demo import run_demo

            # The demo's console stays readable: Dask logs only warnings there.
            for name in ("distributed", "dask"):
                logging.getLogger(name).setLevel(logging.WARNING)

            run_demo(args.config)
    except StreamSVDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
