"""Signed software updates with rollback (protocol.md §5, kiosk/fleet/updates.py).

End to end: real wheels of this tree (a newer one and a deliberately broken one) served on
127.0.0.1, releases as virtualenvs under a temporary /opt/kiosk, the supervisor standing in for
systemd's Restart=always, a private Mosquitto, the Stripe simulator, and `kiosk fleet update`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from kiosk import __version__, cli
from kiosk.fleet import signing, updates
from kiosk.fleet.agent import EXIT_RESTART
from kiosk.settings import Settings
from tests.fleet import wheels
from tests.fleet.artifacts import ArtifactServer
from tests.fleet.operator import Operator, operator, rfc3339
from tests.fleet.supervisor import Supervisor
from tests.harness import API_KEY, Controller, controller

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from kiosk.mosquitto import Mosquitto

GOOD = "9.0.0"
BROKEN = "9.0.1"


@dataclass(frozen=True)
class Wheels:
    base: Path
    good: Path
    broken: Path


@pytest.fixture(name="wheels_built", scope="session")
def fixture_wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    out = tmp_path_factory.mktemp("wheels")
    # It fails as the daemon's modules are imported — as a release missing a package it needs
    # would — so the guard must run before them.
    broken_edit = (
        "from kiosk import __version__, crashpoints, logs, messages\n",
        'raise ImportError("a deliberately broken release")\n',
    )
    return Wheels(
        base=wheels.build(out, __version__),
        good=wheels.build(out, GOOD),
        broken=wheels.build(out, BROKEN, edits={"kiosk/service.py": broken_edit}),
    )


# --- downloads ---------------------------------------------------------------------------------


async def no_sleep(_: float) -> None:
    return None


def artifact_for(server: ArtifactServer, data: bytes, path: str = "/kiosk.whl") -> updates.Artifact:
    server.served.files[path] = data
    return updates.Artifact(server.url(path), hashlib.sha256(data).hexdigest(), len(data))


async def test_a_cut_download_resumes_where_it_stopped_with_a_range_request(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    with ArtifactServer() as server:
        artifact = artifact_for(server, data)
        server.served.cut_after = 100_000
        part = await updates.download(artifact, tmp_path / "a.part", sleep=no_sleep)
        assert server.served.ranges == [None, "bytes=100000-"]
    assert part.read_bytes() == data


async def test_a_download_larger_than_the_jobs_size_is_cut_off_and_refused(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    with ArtifactServer() as server:
        artifact = artifact_for(server, data)
        server.served.extra = b"more than the job said"
        with pytest.raises(updates.UpdateFailed, match="size_mismatch"):
            await updates.download(artifact, tmp_path / "a.part", sleep=no_sleep)
    part = tmp_path / "a.part"
    assert not part.exists() or part.stat().st_size <= len(data)


async def test_a_missing_artifact_fails_the_download_with_the_http_status(tmp_path: Path) -> None:
    with ArtifactServer() as server:
        artifact = updates.Artifact(server.url("/nothing.whl"), "0" * 64, 10)
        with pytest.raises(updates.UpdateFailed, match="HTTP 404"):
            await updates.download(artifact, tmp_path / "a.part", sleep=no_sleep)


def test_job_documents_are_checked_before_anything_is_fetched() -> None:
    artifact: dict[str, Any] = {"url": "http://127.0.0.1/k.whl", "sha256": "a" * 64, "size": 10}
    good: dict[str, Any] = {
        "type": "software_update",
        "version": "1.2.3",
        "artifact": artifact,
    }
    assert updates.parse_job("j", good).artifact.size == 10
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "reboot"}, "unsupported"),
        ({"version": "../../etc"}, "version"),
        ({"artifact": {**artifact, "url": "file:///etc/passwd"}}, "artifact.url"),
        ({"artifact": {**artifact, "sha256": "xyz"}}, "sha256"),
        ({"artifact": {**artifact, "size": 0}}, "size"),
    ]
    for change, problem in cases:
        with pytest.raises(ValueError, match=problem):
            updates.parse_job("j", {**good, **change})


# --- the boot guard ---------------------------------------------------------------------------------


def guard_settings(tmp_path: Path, deadline_s: float = 180) -> Settings:
    return Settings.model_validate(
        {
            "id": "k1",
            "state_dir": tmp_path / "state",
            "stripe": {"api_key": API_KEY, "reader_id": "tmr_guard"},
            "fleet": {"releases_dir": tmp_path / "opt" / "releases", "update_commit_deadline_s": deadline_s},
        }
    )


def trial(tmp_path: Path) -> updates.Layout:
    """`current` switched to a trial of the running version, the previous release beside it."""
    layout = updates.Layout(tmp_path / "opt" / "releases")
    for version in ("0.0.1", __version__):
        layout.release(version).mkdir(parents=True)
    layout.switch(layout.link_text(__version__))
    (tmp_path / "state").mkdir()
    updates.save_pending(tmp_path / "state", updates.Pending("job-1", __version__, "releases/0.0.1", "trial"))
    return layout


def test_a_trial_release_that_keeps_stopping_is_switched_back_at_its_fourth_start(tmp_path: Path) -> None:
    layout = trial(tmp_path)
    settings = guard_settings(tmp_path)
    for boot in range(1, updates.MAX_TRIAL_BOOTS + 1):
        assert updates.boot_guard(settings) is None
        pending = updates.load_pending(settings.state_dir)
        assert pending is not None
        assert (pending.phase, pending.boots) == ("trial", boot)
    assert layout.active() == f"releases/{__version__}"
    assert updates.boot_guard(settings) == EXIT_RESTART
    assert layout.active() == "releases/0.0.1"
    pending = updates.load_pending(settings.state_dir)
    assert pending is not None
    assert pending.phase == "rolled_back"
    assert pending.reason is not None
    assert "stopped 3 times" in pending.reason


def test_a_trial_release_started_after_its_deadline_is_switched_back(tmp_path: Path) -> None:
    layout = trial(tmp_path)
    settings = guard_settings(tmp_path, deadline_s=60)
    assert updates.boot_guard(settings, clock=lambda: 1000.0) is None
    assert updates.boot_guard(settings, clock=lambda: 1059.0) is None
    assert updates.boot_guard(settings, clock=lambda: 1061.0) == EXIT_RESTART
    assert layout.active() == "releases/0.0.1"


def test_a_trial_that_never_started_is_recorded_as_failed_and_the_running_release_goes_on(tmp_path: Path) -> None:
    trial(tmp_path)
    settings = guard_settings(tmp_path)
    updates.save_pending(settings.state_dir, updates.Pending("job-1", "7.7.7", "releases/0.0.1", "trial"))
    assert updates.boot_guard(settings) is None
    pending = updates.load_pending(settings.state_dir)
    assert pending is not None
    assert pending.phase == "rolled_back"
    assert pending.reason is not None
    assert pending.reason.startswith("switch_failed")


# --- end to end ---------------------------------------------------------------------------------


@dataclass
class Site:
    """One kiosk installed as docs/install.md says, under a temporary /opt/kiosk."""

    root: Path
    layout: updates.Layout
    supervisor: Supervisor
    op: Operator
    ctl: Controller
    server: ArtifactServer
    key_path: Path
    key: Ed25519PrivateKey
    broker: Mosquitto

    async def console(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = await asyncio.to_thread(cli.main, ["fleet", *argv, "--broker", self.broker.url], out=out, err=out)
        return code, out.getvalue()

    def serve(self, wheel: Path) -> str:
        path = f"/{wheel.name}"
        self.server.served.files[path] = wheel.read_bytes()
        return self.server.url(path)


@pytest.fixture(name="site")
async def fixture_site(tmp_path: Path, broker: Mosquitto, wheels_built: Wheels) -> AsyncIterator[Site]:
    from kiosk.simulator import Simulator  # noqa: PLC0415 - only end-to-end tests load it

    root = tmp_path / "opt" / "kiosk"
    layout = updates.Layout(root / "releases")
    await asyncio.to_thread(wheels.make_release, layout.releases, wheels_built.base, __version__)
    layout.switch(layout.link_text(__version__))
    key = signing.generate()
    key_path = tmp_path / "operator.pem"
    key_path.write_bytes(signing.private_pem(key))
    handle = Simulator(seed=11).start_in_thread()
    reader = handle.simulator.register_reader("simulated-wpe")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KIOSK_", "PIP_"))},
        "PIP_NO_INDEX": "1",  # nothing but the artifact server is reached
        "KIOSK_ID": "k1",
        "KIOSK_STATE_DIR": str(tmp_path / "state"),
        "KIOSK_MQTT__URL": broker.url,
        "KIOSK_STRIPE__API_KEY": API_KEY,
        "KIOSK_STRIPE__API_BASE": handle.url,
        "KIOSK_STRIPE__READER_ID": reader,
        "KIOSK_PAYMENTS__CARD_TIMEOUT_S": "60",
        "KIOSK_FLEET__SIGNING_PUBLIC_KEY": signing.public_key_text(key.public_key()),
        "KIOSK_FLEET__RELEASES_DIR": str(layout.releases),
        "KIOSK_FLEET__UPDATE_DEPENDENCIES": "inherit",
        "KIOSK_FLEET__UPDATE_COMMIT_DEADLINE_S": "60",
    }
    supervisor = Supervisor(root, env, tmp_path / "daemon.log")
    try:
        with ArtifactServer() as server:
            async with (
                operator(broker.host, broker.port, key=key) as op,
                controller(broker.host, broker.port) as ctl,
            ):
                supervisor.start()
                try:
                    await op.wait_online(timeout=30)
                    yield Site(root, layout, supervisor, op, ctl, server, key_path, key, broker)
                finally:
                    await asyncio.to_thread(supervisor.stop)
                    print(supervisor.log()[-8000:])
    finally:
        handle.stop()


def job_updates(op: Operator, job_id: str) -> list[dict[str, Any]]:
    return op.on(f"jobs/{job_id}/update")


async def test_a_signed_update_waits_for_the_open_order_then_commits_once_the_new_release_connects(
    site: Site, wheels_built: Wheels
) -> None:
    op, ctl = site.op, site.ctl
    first = await op.wait_online()
    assert first["version"] == __version__

    # A job whose artifact is not the one it names changes nothing.
    url = site.serve(wheels_built.good)
    size = wheels_built.good.stat().st_size
    bad = op.sign(
        {
            "job_id": "bad-sha",
            "type": "software_update",
            "version": GOOD,
            "artifact": {"url": url, "sha256": "0" * 64, "size": size},
            "not_after": rfc3339(600),
        }
    )
    await op.publish("jobs/bad-sha/doc", bad, retain=True)
    failed = await op.wait_for("jobs/bad-sha/update", lambda p: p["status"] == "FAILED", timeout=30)
    assert (failed["step"], failed["reason"].split(":")[0]) == ("verifying", "sha256_mismatch")
    assert not site.layout.release(GOOD).exists()

    # An order waiting for a card is in flight: the update installs, then waits for it.
    await ctl.request("o-open", 150)
    await ctl.wait_for("o-open", "awaiting_card")
    job_id = f"up-{uuid.uuid4().hex[:6]}"
    console = asyncio.create_task(
        site.console("update", "k1", "--wheel", str(wheels_built.good), "--url", url, "--key", str(site.key_path),
                     "--job-id", job_id, "--wait", "120")
    )  # fmt: skip
    await op.wait_for(f"jobs/{job_id}/update", lambda p: p["step"] == "waiting_idle", timeout=60)
    # Meanwhile the controller is told payments are unavailable for maintenance, and new orders
    # are refused, retryable (the open order still owns the reader: `busy` comes first).
    await ctl.wait_until(lambda: ((ctl.daemon_state or {}).get("reason") or {}).get("code") == "maintenance")
    await ctl.request("o-during", 200)
    refused = await ctl.wait_for("o-during", "rejected")
    assert refused["reason"]["code"] in {"busy", "maintenance"}
    assert refused["reason"]["retryable"] is True
    assert site.layout.active() == f"releases/{__version__}"  # not switched while the order is open
    await ctl.cancel("o-open")
    await ctl.wait_for("o-open", "canceled")

    code, out = await console
    assert code == 0, out
    # The console heard the last update on its own connection: the operator's copy may still
    # be on its way.
    await op.wait_for(f"jobs/{job_id}/update", lambda p: (p["status"], p["step"]) == ("SUCCEEDED", "committed"))
    steps = [(p["status"], p["step"]) for p in job_updates(op, job_id)]
    assert steps[0] == ("IN_PROGRESS", "downloading")
    for step in ("verifying", "installing", "waiting_idle", "switching", "health_check"):
        assert ("IN_PROGRESS", step) in steps, steps
    assert steps[-1] == ("SUCCEEDED", "committed")
    assert "SUCCEEDED committed" in out
    new = await op.wait_online(session=first["session"] + 1)
    assert new["version"] == GOOD
    assert site.layout.active() == f"releases/{GOOD}"
    runs = site.supervisor.runs
    assert [r.release for r in runs] == [f"releases/{__version__}", f"releases/{GOOD}"]
    assert runs[0].exit_code == EXIT_RESTART
    assert not (site.root / "state" / updates.PENDING_FILE).exists()
    # The new release takes orders; the retained job document was cleared by the console.
    await ctl.request("o-after", 300)
    await ctl.wait_for("o-after", "awaiting_card")
    await op.wait_until(lambda: op.last(f"jobs/{job_id}/doc") == {})


async def test_a_broken_release_is_switched_back_and_the_previous_release_reports_the_rollback(
    site: Site, wheels_built: Wheels
) -> None:
    op = site.op
    first = await op.wait_online()
    url = site.serve(wheels_built.broken)
    code, out = await site.console(
        "update", "k1", "--wheel", str(wheels_built.broken), "--url", url, "--key", str(site.key_path),
        "--job-id", "broken-1", "--wait", "120",
    )  # fmt: skip
    assert code == 1, out
    # Heard by the console first, on its own connection: wait for the operator's copy.
    await op.wait_for("jobs/broken-1/update", lambda p: (p["status"], p["step"]) == ("FAILED", "rolled_back"))
    final = job_updates(op, "broken-1")[-1]
    assert (final["status"], final["step"]) == ("FAILED", "rolled_back")
    assert final["reason"].startswith("not_healthy")
    assert "FAILED rolled_back" in out
    back = await op.wait_online()
    assert back["version"] == __version__
    assert back["session"] > first["session"]
    assert site.layout.active() == f"releases/{__version__}"
    assert not site.layout.release(BROKEN).exists()
    runs = site.supervisor.runs
    trials = runs[1 : 1 + updates.MAX_TRIAL_BOOTS + 1]
    assert [r.release for r in trials] == [f"releases/{BROKEN}"] * (updates.MAX_TRIAL_BOOTS + 1)
    assert [r.exit_code for r in trials] == [1] * updates.MAX_TRIAL_BOOTS + [EXIT_RESTART]
    assert runs[-1].release == f"releases/{__version__}"
    assert runs[-1].exit_code is None  # serving
