"""systemd/kiosk.service says what kiosk needs, and passes the CI gates of scripts/check-unit."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt
import httpx
import pytest

from kiosk import cli, settings
from kiosk.mosquitto import Mosquitto, free_port
from kiosk.systemd import Notifier

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "kiosk.service"
SYSUSERS = ROOT / "systemd" / "kiosk.sysusers"
TMPFILES = ROOT / "systemd" / "kiosk.tmpfiles"
CHECK_UNIT = ROOT / "scripts" / "check-unit"
THRESHOLD = 1.5

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """Sections of a unit file as (key, value) lists: keys may repeat, as in systemd."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{line!r} is outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{line!r} is not key=value"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every value of key, with an empty assignment resetting the list as systemd does."""
    out: list[str] = []
    for name, value in unit.get(section, []):
        if name == key:
            out = [] if value == "" else [*out, value]
    return out


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times"
    return found[0]


def seconds(value: str) -> float:
    """A systemd time span such as 30s, 2min or 1min 30s, in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


@pytest.fixture(name="unit", scope="module")
def fixture_unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def test_the_daemon_starts_as_a_notify_service_from_the_active_release(unit: Unit) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    argv = one(unit, "Service", "ExecStart").split()
    assert argv == ["/opt/kiosk/current/bin/kiosk", "run", "--config", "/etc/kiosk/kiosk.toml"]
    # kiosk's own command line accepts exactly these arguments.
    parser, commands = cli._parser()
    args = parser.parse_args(argv[1:])
    assert args.command == "run"
    assert "run" in commands
    assert args.config == "/etc/kiosk/kiosk.toml"


def test_the_watchdog_is_fed_at_half_its_period(unit: Unit) -> None:
    watchdog = seconds(one(unit, "Service", "WatchdogSec"))
    assert 10 <= watchdog <= 120
    # systemd passes WatchdogSec to kiosk as WATCHDOG_USEC; kiosk pings at half of it.
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": str(int(watchdog * 1e6))})
    assert notifier.watchdog_interval == watchdog / 2


def test_kiosk_is_always_restarted_and_stopped_within_a_bound(unit: Unit) -> None:
    assert one(unit, "Service", "Restart") == "always"
    assert 1 <= seconds(one(unit, "Service", "RestartSec")) <= 30
    assert one(unit, "Unit", "StartLimitIntervalSec") == "0"
    stop = seconds(one(unit, "Service", "TimeoutStopSec"))
    assert 10 <= stop <= 60
    # SIGTERM to the daemon only; what is left after it is killed.
    assert one(unit, "Service", "KillMode") == "mixed"


def test_ready_does_not_wait_for_the_network(unit: Unit) -> None:
    ordering = " ".join(values(unit, "Unit", "After") + values(unit, "Unit", "Wants"))
    assert "network-online.target" not in ordering
    assert "mosquitto.service" in values(unit, "Unit", "After")
    assert "mosquitto.service" in values(unit, "Unit", "Wants")
    assert not values(unit, "Unit", "Requires")


def test_credentials_are_the_ones_kiosk_reads(unit: Unit) -> None:
    loaded = {}
    for entry in values(unit, "Service", "LoadCredential"):
        name, _, source = entry.removeprefix("-").partition(":")
        loaded[name] = source
    assert set(loaded) == set(settings.CREDENTIAL_FILES)
    for name, source in loaded.items():
        assert source == f"/etc/kiosk/credentials/{name}"
    # kiosk reads the copies in $CREDENTIALS_DIRECTORY; the sources stay out of its sight.
    assert "-/etc/kiosk/credentials" in values(unit, "Service", "InaccessiblePaths")


def test_credentials_from_the_unit_reach_the_settings(unit: Unit, tmp_path: Path) -> None:
    # What systemd would put in $CREDENTIALS_DIRECTORY for the names the unit loads.
    for entry in values(unit, "Service", "LoadCredential"):
        name = entry.removeprefix("-").partition(":")[0]
        secret = "sk_test_" + "A1b2C3d4" * 3 if name == "stripe_api_key" else "broker-secret"
        (tmp_path / name).write_text(secret + "\n", encoding="utf-8")
    loaded = settings.load(
        None,
        environ={
            "KIOSK_ID": "vm-lobby-1",
            "KIOSK_STRIPE__READER_ID": "tmr_Test123",
            "CREDENTIALS_DIRECTORY": str(tmp_path),
        },
    )
    assert loaded.settings.stripe.api_key.get_secret_value() == "sk_test_" + "A1b2C3d4" * 3
    assert loaded.settings.mqtt.password is not None
    assert loaded.settings.mqtt.password.get_secret_value() == "broker-secret"
    assert loaded.sources["stripe.api_key"] == "credential"


def test_directories_match_kiosks_defaults(unit: Unit, monkeypatch: pytest.MonkeyPatch) -> None:
    name = one(unit, "Service", "StateDirectory")
    assert name == "kiosk"
    # systemd sets $STATE_DIRECTORY=/var/lib/<name>, which kiosk takes as its state_dir.
    monkeypatch.setenv("STATE_DIRECTORY", f"/var/lib/{name}")
    assert settings._default_state_dir() == Path("/var/lib/kiosk")
    assert one(unit, "Service", "ConfigurationDirectory") == "kiosk"
    config = Path(one(unit, "Service", "ExecStart").split()[3])
    assert config.parent == Path("/etc/kiosk")
    # Software updates write releases and switch `current`: both are under ReadWritePaths.
    releases = settings.FleetSettings().releases_dir
    writable = [Path(p.removeprefix("-")) for p in values(unit, "Service", "ReadWritePaths")]
    assert any(releases.is_relative_to(p) for p in writable), (releases, writable)
    current = Path(one(unit, "Service", "ExecStart").split()[0]).parents[1]
    assert current.parent in writable
    assert releases.parent == current.parent


def test_the_service_user_exists_and_owns_the_releases(unit: Unit) -> None:
    user = one(unit, "Service", "User")
    assert user not in {"root", "0"}
    assert not values(unit, "Service", "DynamicUser")
    sysusers = [line.split() for line in SYSUSERS.read_text(encoding="utf-8").splitlines()]
    assert ["u", user] in [words[:2] for words in sysusers if words]
    tmpfiles = [line.split() for line in TMPFILES.read_text(encoding="utf-8").splitlines()]
    owned = {words[1]: words[3] for words in tmpfiles if words and words[0] == "d"}
    assert owned[str(settings.FleetSettings().releases_dir)] == user
    assert owned["/etc/kiosk/credentials"] == "root"


def test_the_sandbox_is_the_documented_one(unit: Unit) -> None:
    service = dict(unit["Service"])
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "UMask": "0077",
    }
    assert {key: service.get(key) for key in expected} == expected
    families = set(one(unit, "Service", "RestrictAddressFamilies").split())
    # AF_UNIX: sd_notify and a unix-socket broker; AF_INET(6): broker, DNS and Stripe.
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert values(unit, "Service", "SystemCallFilter")[0] == "@system-service"
    # Sized for a 512 MB Raspberry Pi: kiosk is capped well below the machine's memory.
    high = int(one(unit, "Service", "MemoryHigh").removesuffix("M"))
    cap = int(one(unit, "Service", "MemoryMax").removesuffix("M"))
    assert 0 < high < cap <= 256


# --- the CI gate ---------------------------------------------------------------------------------


def _require_systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd); scripts/check-unit installs it")


def test_the_unit_passes_check_unit() -> None:
    _require_systemd_analyze()
    result = subprocess.run([str(CHECK_UNIT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"^exposure (\d+\.\d)", result.stdout, re.MULTILINE)
    assert found, result.stdout
    assert float(found.group(1)) <= THRESHOLD
    assert "check-unit: OK" in result.stdout


def test_check_unit_fails_a_unit_with_a_typo(tmp_path: Path) -> None:
    _require_systemd_analyze()
    broken = tmp_path / "kiosk.service"
    broken.write_text(
        UNIT.read_text(encoding="utf-8").replace("KillMode=mixed", "KillMod=mixed"),
        encoding="utf-8",
    )
    result = subprocess.run([str(CHECK_UNIT), str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "Unknown key 'KillMod'" in result.stderr
    assert "check-unit: FAIL: systemd-analyze verify found problems" in result.stderr


def test_check_unit_fails_a_unit_without_its_sandbox(tmp_path: Path) -> None:
    _require_systemd_analyze()
    loose = [
        line
        for line in UNIT.read_text(encoding="utf-8").splitlines()
        if not line.startswith(("ProtectSystem=", "PrivateDevices=", "SystemCallFilter=", "PrivateUsers="))
    ]
    (tmp_path / "kiosk.service").write_text("\n".join(loose) + "\n", encoding="utf-8")
    result = subprocess.run(
        [str(CHECK_UNIT), str(tmp_path / "kiosk.service")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert re.search(r"has exposure \d+\.\d, above the threshold 1\.5", result.stderr), result.stderr


# --- MemoryDenyWriteExecute ----------------------------------------------------------------------

# systemd 252 enforces MemoryDenyWriteExecute= with a seccomp filter that refuses W+X mappings
# and making memory executable. The kernel's own PR_SET_MDWE (PR_MDWE_REFUSE_EXEC_GAIN, Linux
# 6.3+, kept across exec) refuses the same and needs no privileges, so a child sets it and
# re-executes Python with the probe: the interpreter starts under it as under systemd.
_MDWE_LAUNCHER = """
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
"""
_IMPORTABLE = """
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        continue
    print(name)
"""
_PROBE = """
import importlib, mmap, sqlite3, ssl, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
Ed25519PrivateKey.generate().sign(b"kiosk")
ssl.create_default_context()
sqlite3.connect(":memory:").execute("create table t (x)")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("mdwe-enforced")
"""


def _kiosk_modules() -> list[str]:
    names = ["stripe", "aiomqtt", "httpx", "pydantic", "structlog", "cryptography"]
    names += sorted(f"kiosk.{path.stem}" for path in (ROOT / "kiosk").glob("*.py") if not path.stem.startswith("_"))
    # Modules that do not import even without MDWE (work in progress elsewhere) prove nothing here.
    importable = subprocess.run(
        [sys.executable, "-c", _IMPORTABLE, *names],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return importable.stdout.split()


def test_kiosk_runs_without_writable_executable_memory() -> None:
    modules = _kiosk_modules()
    assert "kiosk.settings" in modules
    result = subprocess.run(
        [sys.executable, "-c", _MDWE_LAUNCHER, _PROBE, *modules],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+) to stand in for MemoryDenyWriteExecute")
    assert result.returncode == 0, result.stderr
    # The probe's own W+X mapping was refused: MDWE was really on while kiosk's modules loaded.
    assert "mdwe-enforced" in result.stdout


# --- the daemon inside the unit's /proc and memory restrictions ----------------------------------

# The unit's `ProtectProc=invisible` and `ProcSubset=pid` become a /proc mounted with
# hidepid=invisible,subset=pid in a private mount namespace (needs root), and
# MemoryDenyWriteExecute the kernel's MDWE; then `kiosk run` must serve an order end to end
# through the shipped broker set-up and stop with exit 0 on SIGTERM. This catches what would only
# break on a device: a new dependency reading /proc/meminfo or /proc/sys, or one that needs
# writable executable memory.
_SANDBOXED = 'mount -t proc -o hidepid=invisible,subset=pid proc /proc && test ! -e /proc/meminfo && exec "$@"'
_RUN_KIOSK = """
import sys
from kiosk.cli import main
sys.exit(main(["run"]))
"""


@dataclass(frozen=True, slots=True)
class Stack:
    """A shipped-config broker, the Stripe simulator with a simulated reader, and kiosk's env."""

    broker: Mosquitto
    env: dict[str, str]
    log: Path


@pytest.fixture(name="stack")
def fixture_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a restricted /proc in a private mount namespace needs root and unshare")
    # The ACL test module owns the shipped-broker helpers.
    from tests.test_mosquitto_acl import (  # noqa: PLC0415
        KIOSK_ID,
        PASSWORDS,
        ShippedBroker,
        make_password_file,
    )

    work = tmp_path_factory.mktemp("sandbox")
    make_password_file(work / "passwd")
    broker = ShippedBroker(work)
    broker.start()
    port = free_port()
    simulator = subprocess.Popen(
        [sys.executable, "-m", "kiosk", "simulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        key = "sk_test_" + "Sandbox1" * 3
        api = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=api, auth=(key, ""), timeout=5) as stripe_http:
            for _ in range(200):
                try:
                    reply = stripe_http.post("/v1/terminal/readers", data={"registration_code": "simulated-wpe"})
                    break
                except httpx.ConnectError:
                    time.sleep(0.05)
            else:
                pytest.fail("kiosk simulator did not start")
        credentials = work / "credentials"
        credentials.mkdir()
        (credentials / "stripe_api_key").write_text(key, encoding="utf-8")
        (credentials / "mqtt_password").write_text(PASSWORDS["kioskd"], encoding="utf-8")
        (work / "state").mkdir()
        env = {
            **os.environ,
            "KIOSK_ID": KIOSK_ID,
            "KIOSK_STATE_DIR": str(work / "state"),
            "KIOSK_STRIPE__READER_ID": reply.json()["id"],
            "KIOSK_STRIPE__API_BASE": api,
            "KIOSK_MQTT__URL": f"mqtt://127.0.0.1:{broker.port}",
            "KIOSK_MQTT__USERNAME": "kioskd",
            "CREDENTIALS_DIRECTORY": str(credentials),
        }
        yield Stack(broker=broker, env=env, log=work / "kiosk.log")
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
        broker.kill()


async def _serve_one_order(broker: Mosquitto, password: str) -> None:
    async with aiomqtt.Client(broker.host, broker.port, username="controller", password=password) as controller:
        await controller.subscribe("vend/v1/kioskd/state", qos=1)
        await controller.subscribe("vend/v1/order/+/status", qos=1)
        async with asyncio.timeout(20):
            async for message in controller.messages:
                if json.loads(str(message.payload, "utf-8"))["state"] == "online":
                    break
            request = {
                "v": 1,
                "id": "m-1",
                "ts": "2026-01-01T00:00:00Z",
                "order_id": "o-sandbox",
                "amount": 250,
                "currency": "usd",
            }
            await controller.publish("vend/v1/order/o-sandbox/request", json.dumps(request), qos=1)
            async for message in controller.messages:
                status = json.loads(str(message.payload, "utf-8"))
                if status.get("order_id") == "o-sandbox" and status["state"] == "awaiting_card":
                    return


@pytest.mark.slow
async def test_kiosk_serves_an_order_with_the_units_proc_and_memory_restrictions(
    stack: Stack,
) -> None:
    from tests.test_mosquitto_acl import PASSWORDS  # noqa: PLC0415

    with stack.log.open("wb") as out:
        daemon = await asyncio.create_subprocess_exec(
            *["unshare", "--mount", "sh", "-c", _SANDBOXED, "sh"],
            *[sys.executable, "-c", _MDWE_LAUNCHER, _RUN_KIOSK],
            env=stack.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        await _serve_one_order(stack.broker, PASSWORDS["controller"])
        daemon.send_signal(signal.SIGTERM)
        # Within the unit's TimeoutStopSec, and cleanly.
        async with asyncio.timeout(20):
            assert await daemon.wait() == 0, stack.log.read_text(errors="replace")
    except BaseException:
        print(stack.log.read_text(errors="replace"))
        raise
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
