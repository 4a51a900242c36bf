"""Figures for the `health` message: what the process and the machine look like right now.

Every probe is a cheap read of /proc, /sys or statvfs and answers None when the figure cannot
be read (a container without /sys/class/thermal, a missing state directory).
"""

from __future__ import annotations

import shutil
from pathlib import Path

PROC_STATUS = Path("/proc/self/status")
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
HOUR_S = 3600.0
DAY_S = 24 * HOUR_S


def rss_mb(status: Path = PROC_STATUS) -> float | None:
    """Resident memory of this process in MiB (`VmRSS` of /proc/self/status)."""
    try:
        for line in status.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)  # the kernel counts in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def disk_free_mb(path: Path) -> float | None:
    """Free space for the journal, in MiB."""
    try:
        return round(shutil.disk_usage(path).free / (1024 * 1024), 1)
    except OSError:
        return None


def cpu_temp_c(zone: Path = THERMAL_ZONE) -> float | None:
    """The SoC temperature in °C (a Raspberry Pi's thermal zone 0), when readable."""
    try:
        return round(int(zone.read_text(encoding="ascii").strip()) / 1000, 1)  # millidegrees
    except (OSError, ValueError):
        return None


def since(now: float, at: float | None) -> float | None:
    """Seconds from `at` to `now`, rounded, or None when it never happened."""
    return None if at is None else round(max(0.0, now - at), 1)


def recent_errors(errors: list[float], now: float) -> int:
    """Errors in the last hour; older entries are dropped from the list (it must not grow forever)."""
    errors[:] = [t for t in errors if t >= now - HOUR_S]
    return len(errors)
