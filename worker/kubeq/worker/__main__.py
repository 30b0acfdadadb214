"""`python -m kubeq.worker [--app m:attr] [--queue q] ...`: flags override KUBEQ_* env."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from kubeq.worker import WorkerSettings, run_worker


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubeq.worker")
    p.add_argument("--app", help="package.module:attribute of the App")
    p.add_argument("--queue", action="append", help="repeat to serve several queues")
    p.add_argument("--namespace")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--redis-url")
    p.add_argument("--metrics-port", type=int)
    given: dict[str, Any] = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    if "queue" in given:
        given["queue"] = ",".join(given["queue"])
    try:
        settings = WorkerSettings(**given)
    except ValidationError as exc:
        print(f"invalid worker settings: {exc}", file=sys.stderr)
        return 2
    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
