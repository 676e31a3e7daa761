"""``python -m bench``: measure the dispatcher.

Workloads:
  smoke   the embedded default in one process (SQLite, log providers): seed N users with
          email, phone and a device, send one bulk of the app-install template to all of them
          (one request per 10,000 recipients), deliver it; prints the accept time, the delivery
          time and ledger rows per second.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.smoke import main as smoke


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="workload", required=True)
    s = sub.add_parser("smoke", help="embedded default, one bulk, in one process")
    s.add_argument("--recipients", type=int, default=10_000)
    s.add_argument("--workers", type=int, default=4, help="chunks in progress at once")
    args = parser.parse_args(argv)
    result = smoke(args.recipients, args.workers)
    print(json.dumps({"recipients": result.recipients, "rows": result.rows,
                      "final_rows": result.final_rows,
                      "accept_seconds": round(result.accept_seconds, 3),
                      "deliver_seconds": round(result.deliver_seconds, 3),
                      "rows_per_second": round(result.rows_per_second)}))
    return 0 if result.final_rows == result.rows == 4 * result.recipients else 1


sys.exit(cli())
