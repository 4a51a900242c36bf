"""Start-up: process start → READY=1, RSS at READY, and the import time of `kiosk run`'s modules.

READY=1 arrives on a real AF_UNIX datagram socket given as `NOTIFY_SOCKET`, as systemd's would.
The daemon opens its journal and restores open orders before READY=1; it does not wait for the
broker or Stripe. Import time: a fresh interpreter importing what `kiosk run` imports, against one
that imports nothing, and the heaviest packages by `-X importtime`.

    .venv/bin/python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import rig  # noqa: E402 - after the path is set

IMPORTS = "import kiosk.cli, kiosk.service, kiosk.settings"


def interpreter_s(code: str) -> float:
    """Wall time of `python -c code` in a fresh interpreter."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - start


def heaviest(top: int) -> list[tuple[int, str]]:
    """The packages (top-level names) that take longest to import, cumulative µs, one run."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", IMPORTS], capture_output=True, text=True, check=True, cwd=ROOT
    )
    totals: dict[str, int] = {}
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        if "." not in name and name not in ("kiosk", "site", "encodings"):
            # A package's first import is the one that pays for it.
            totals.setdefault(name, int(parts[1]))
    return sorted(((us, name) for name, us in totals.items()), reverse=True)[:top]


def main() -> None:
    """Parse arguments, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ready: list[float] = []
    rss: list[float] = []
    managed: list[float] = []
    # A managed kiosk: the fleet on, with the operator's signing key (which loads cryptography).
    from kiosk.fleet import signing  # noqa: PLC0415 - the benchmark's process, not the daemon's

    fleet = {
        "FLEET__ENABLED": "true",
        "FLEET__SIGNING_PUBLIC_KEY": signing.public_key_text(signing.generate().public_key()),
    }
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-") as tmp, rig.setup(Path(tmp)) as s:
        for i in range(args.runs):
            for settings, into in (({}, rss), (fleet, managed)):
                daemon = s.daemon(f"d{i}{'f' if settings else ''}", **settings)
                daemon.start()
                try:
                    seconds = daemon.wait_ready()
                    into.append(rig.rss_mb(daemon.pid)[0])
                    if not settings:
                        ready.append(seconds)
                finally:
                    daemon.stop()
    bare = min(interpreter_s("pass") for _ in range(args.runs))
    full = min(interpreter_s(IMPORTS) for _ in range(args.runs))
    print(f"machine: {rig.machine()}")
    print(
        f"process start → READY=1    median {statistics.median(ready) * 1000:5.0f} ms, "
        f"max {max(ready) * 1000:5.0f} ms over {args.runs} starts (target <= 1000 ms)"
    )
    print(f"RSS at READY=1              median {statistics.median(rss):5.1f} MB   (fleet off, as bench/orders.py)")
    print(f"  with the fleet on and a signing key  {statistics.median(managed):5.1f} MB")
    print(
        f"import of kiosk run's modules {1000 * (full - bare):5.0f} ms "
        f"(interpreter alone {1000 * bare:.0f} ms; best of {args.runs})"
    )
    print("heaviest packages (cumulative, one run; a package imported inside another counts for that one):")
    for us, name in heaviest(8):
        print(f"  {us / 1000:6.1f} ms  {name}")


if __name__ == "__main__":
    main()
