"""What `kiosk run` asks of the kernel, the unit's SystemCallFilter allows.

systemd/kiosk.service confines kiosk to `@system-service` without `@privileged` and `@resources`,
and answers any other system call with EPERM. A library that starts using another one (an event
loop's io_uring, a new lock) would then fail on the Pi, not here: this test runs a whole sale,
with the fleet on, under strace and checks every call it made against the unit's filter, as the
machine's systemd-analyze expands its groups (Debian 12's systemd 252, as on Raspberry Pi OS).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.crashrig import crash_rig, vend_when_approved
from tests.test_systemd_unit import UNIT, parse_unit, values

if TYPE_CHECKING:
    from kiosk.mosquitto import Mosquitto

pytestmark = pytest.mark.slow

# SQLite gives a new WAL file the database's owner when it runs as root, as these tests may; the
# unit runs kiosk as its own user, so under systemd it never asks.
ONLY_AS_ROOT = frozenset({"fchown"})


@cache
def expand(name: str) -> frozenset[str]:
    """A system call, or every call of a `@group` as systemd-analyze lists it (nested groups too)."""
    if not name.startswith("@"):
        return frozenset({name})
    listed = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True)
    calls: set[str] = set()
    for line in listed.stdout.splitlines()[1:]:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            calls |= expand(entry)
    return frozenset(calls)


def allowed_by_unit() -> frozenset[str]:
    """The calls the unit's SystemCallFilter lines allow: the allow-list, less each `~` deny-list."""
    allowed: set[str] = set()
    for line in values(parse_unit(UNIT.read_text(encoding="utf-8")), "Service", "SystemCallFilter"):
        denied = line.startswith("~")
        calls = set().union(*(expand(name) for name in line.removeprefix("~").split()))
        if denied:
            allowed -= calls
        else:
            allowed |= calls
    return frozenset(allowed)


def calls_made(summary: Path) -> set[str]:
    """The calls in `strace -c`'s table."""
    made: set[str] = set()
    for line in summary.read_text().splitlines():
        fields = line.split()
        if fields and fields[0][0].isdigit():
            made.add(fields[-1])
    made.discard("total")
    return made


async def test_a_sale_with_the_fleet_on_makes_only_calls_the_unit_allows(tmp_path: Path, broker: Mosquitto) -> None:
    for tool, package in (("strace", "strace"), ("systemd-analyze", "systemd")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; scripts/test installs it (apt-get install {package})")
    summary = tmp_path / "syscalls.txt"
    async with crash_rig(tmp_path, broker, FLEET__ENABLED="true") as rig:
        rig.daemon.wrapper = ["strace", "--follow-forks", "--summary-only", "--output", str(summary)]
        rig.sim.auto_present(rig.reader, 0.2)
        await rig.start_and_order(None, "o-1", 250)
        final = await vend_when_approved(rig.ctl, "o-1", "success")
        assert (final["state"], final["captured_amount"]) == ("completed", 250)
        assert await asyncio.to_thread(rig.daemon.terminate) == 0
    made = calls_made(summary)
    assert {"epoll_ctl", "fdatasync", "sendto"} <= made  # the table was read: the loop, the journal, the bus
    assert sorted(made - ONLY_AS_ROOT - allowed_by_unit()) == []
