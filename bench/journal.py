"""SQLite commits and fsyncs per completed order (`kiosk run` under strace).

The daemon runs under `strace -f -e trace=fsync,fdatasync -y` (every thread; `-y` names the
file of each descriptor). The journal is SQLite in WAL mode with `synchronous=FULL`: each commit
syncs the WAL once, and each checkpoint syncs the WAL and then the database, so

    commits = WAL syncs - database syncs,     fsyncs = every sync of any file.

Only the syncs made while the measured orders ran count (strace's timestamps). strace slows the
daemon's system calls; this script measures counts, not time. Needs strace and ptrace rights.

    .venv/bin/python bench/journal.py [--orders 200]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import rig  # noqa: E402 - after the path is set

_SYNC = re.compile(r"^\d+\s+(\d+\.\d+)\s+(fsync|fdatasync)\((\d+)<([^>]*)>\)")


async def main_async(args: argparse.Namespace) -> None:
    if shutil.which("strace") is None:
        raise SystemExit("strace is not installed")
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-") as tmp, rig.setup(Path(tmp)) as s:
        s.sim.auto_present(s.reader, 0.0)
        trace = Path(tmp) / "strace.out"
        daemon = s.daemon(**rig.fast())
        daemon.start(wrapper=["strace", "-f", "-ttt", "-y", "-e", "trace=fsync,fdatasync", "-o", str(trace)])
        try:
            daemon.wait_ready(60)
            async with rig.controller(s.broker) as ctl:
                await ctl.wait_payments()
                await asyncio.sleep(1.0)
                for i in range(10):
                    await rig.sale(ctl, f"warm-{i}")
                begin = time.time()
                for i in range(args.orders):
                    await rig.sale(ctl, f"j-{i}")
                    ctl.forget(f"j-{i}")
                end = time.time()
        finally:
            daemon.stop()
        syncs: Counter[str] = Counter()
        for line in trace.read_text().splitlines():
            found = _SYNC.match(line)
            if found and begin <= float(found.group(1)) <= end:
                path = found.group(4)
                kind = "WAL" if path.endswith("-wal") else "database" if path.endswith(".db") else path
                syncs[kind] += 1
    commits = syncs["WAL"] - syncs["database"]
    print(f"machine: {rig.machine()}")
    print(f"orders: {args.orders} (reader polled every 10 ms, card read at once; one reader read per order)")
    print(f"SQLite commits per order   {commits / args.orders:6.2f}")
    print(f"fsyncs per order           {sum(syncs.values()) / args.orders:6.2f}")
    for kind, count in sorted(syncs.items()):
        print(f"  {count / args.orders:6.2f}  {kind}")
    print(f"checkpoints per order      {syncs['database'] / args.orders:6.2f}")


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
