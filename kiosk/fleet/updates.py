"""Signed software updates with rollback: the `software_update` job of protocol.md §5.

Layout (the systemd unit runs `/opt/kiosk/current/bin/kiosk run`):

    /opt/kiosk/releases/<version>/   one virtualenv per release (fleet.releases_dir)
    /opt/kiosk/current               symlink to releases/<version>: the active release
    /opt/kiosk/releases/.downloads/  partial and finished wheel downloads

A job goes: downloading (HTTP(S), resumable with Range, never more than `artifact.size` bytes,
bounded in time) → verifying (size, sha256, and the job's signature again) → installing (a new
virtualenv at releases/<version>, the wheel installed into it, its `kiosk --version` checked) →
waiting_idle (new orders refused with `maintenance` until no order is open) → switching (the job
is written to `{state_dir}/update.json` as a trial, then `current` is replaced atomically) → the
daemon exits with EXIT_RESTART and the service manager starts the new release → health_check
(the new release must reach READY and connect to the broker within
`fleet.update_commit_deadline_s`) → committed. A release that exits at start
`MAX_TRIAL_BOOTS` times, or misses the deadline, is switched back by `boot_guard` (at the start
of `kiosk run`) or by the running trial itself, and the release that comes back reports
`FAILED`/`rolled_back`. Every final status is reported by the release running afterwards.

Without `fleet.signing_public_key` kiosk refuses software updates: anyone who can publish on the
broker could otherwise make it run their code.
"""

# Small local file operations (stat, unlink, the download's writes) run on the event loop: they
# are quick next to the network transfer they belong to, and an update happens rarely.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from kiosk import __version__, logs
from kiosk.fleet import signing
from kiosk.fleet.agent import EXIT_RESTART

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from kiosk.fleet.agent import FleetAgent, Host
    from kiosk.settings import Settings

log = logs.get("updates")

PENDING_FILE = "update.json"
COMPLETE_MARK = ".kiosk-release"  # written last: a release directory without it is unfinished
DOWNLOADS = ".downloads"
INHERIT_PTH = "_kiosk_inherit.pth"
MAX_TRIAL_BOOTS = 3
MAX_ARTIFACT = 200 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 600.0
DOWNLOAD_ATTEMPTS = 4
READ_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 900.0
IDLE_TIMEOUT_S = 1800.0
IDLE_SETTLE_S = 1.0
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")

# `progress` is the whole job's, in percent.
PROGRESS = {
    "downloading": 0,
    "verifying": 45,
    "installing": 50,
    "waiting_idle": 70,
    "switching": 80,
    "health_check": 90,
    "committed": 100,
    "rolled_back": 100,
}


class UpdateFailed(Exception):  # noqa: N818 - a job's FAILED report: the step and why
    """A step of an update could not be done; nothing was switched."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Artifact:
    """What the job says to install: a wheel at `url` of exactly `size` bytes with this sha256."""

    url: str
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Job:
    """A checked `software_update` job document."""

    job_id: str
    version: str
    artifact: Artifact


def parse_job(job_id: str, doc: dict[str, Any]) -> Job:
    """The job from its document.

    Raises:
        ValueError: with the sentence to report (REJECTED).
    """
    if doc.get("type") != "software_update":
        raise ValueError(f"unsupported: job type {str(doc.get('type'))[:40]!r}; kiosk runs software_update")
    version = doc.get("version")
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise ValueError("bad_request: version must be 1 to 64 letters, digits, '.', '+', '_' or '-'")
    artifact = doc.get("artifact")
    if not isinstance(artifact, dict):
        raise ValueError("bad_request: artifact must be {url, sha256, size}")  # noqa: TRY004 - the report
    url, sha, size = artifact.get("url"), artifact.get("sha256"), artifact.get("size")
    if not isinstance(url, str) or urlsplit(url).scheme not in {"http", "https"} or not urlsplit(url).hostname:
        raise ValueError("bad_request: artifact.url must be an http or https URL")
    if not isinstance(sha, str) or not SHA256_PATTERN.fullmatch(sha.lower()):
        raise ValueError("bad_request: artifact.sha256 must be 64 hexadecimal digits")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_ARTIFACT:
        raise ValueError(f"bad_request: artifact.size must be a whole number of bytes up to {MAX_ARTIFACT}")
    return Job(job_id, version, Artifact(url, sha.lower(), size))


@dataclass(frozen=True, slots=True)
class Pending:
    """The update a restart is part of, in `{state_dir}/update.json`.

    `phase` is `trial` (switched to `version`, not yet committed) or `rolled_back` (switched back
    to `previous`; `reason` says why). `previous` is the link text `current` had before.
    """

    job_id: str
    version: str
    previous: str
    phase: str
    boots: int = 0
    first_boot_at: float | None = None
    reason: str | None = None


def load_pending(state_dir: Path) -> Pending | None:
    """The pending update, or None (an unreadable file is logged and ignored)."""
    path = state_dir / PENDING_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Pending(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("update.pending_unreadable", path=str(path), error=str(exc))
        return None


def save_pending(state_dir: Path, pending: Pending) -> None:
    """Write the pending update durably (temp file, fsync, rename)."""
    _write_atomically(state_dir / PENDING_FILE, json.dumps(asdict(pending)).encode())


def clear_pending(state_dir: Path) -> None:
    """Forget the pending update."""
    with contextlib.suppress(FileNotFoundError):
        (state_dir / PENDING_FILE).unlink()
    _fsync_dir(state_dir)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the release layout ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """Releases side by side under `releases`, the active one named by the `current` symlink beside it."""

    releases: Path

    @property
    def current(self) -> Path:
        """`/opt/kiosk/current`: the sibling of the releases directory."""
        return self.releases.parent / "current"

    def release(self, version: str) -> Path:
        """A release's virtualenv."""
        return self.releases / version

    def active(self) -> str | None:
        """The link text of `current` (like `releases/1.2.0`), or None when it is not a symlink."""
        try:
            return str(self.current.readlink())
        except OSError:
            return None

    def link_text(self, version: str) -> str:
        """What `current` holds to point at a release: relative, so the tree can be moved or mounted."""
        return os.path.relpath(self.release(version), self.current.parent)

    def switch(self, link_text: str) -> None:
        """Point `current` at `link_text` atomically: a new symlink renamed over the old one."""
        tmp = self.current.with_name(f".current.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(link_text)
        tmp.replace(self.current)
        _fsync_dir(self.current.parent)
        log.info("update.switched", current=str(self.current), target=link_text)


# -- downloading -----------------------------------------------------------------------------


async def download(  # noqa: PLR0913 - the artifact, where, and test seams
    artifact: Artifact,
    part: Path,
    *,
    progress: Callable[[int], Awaitable[None]] | None = None,
    attempts: int = DOWNLOAD_ATTEMPTS,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Path:
    """Fetch the artifact into `part`, resuming what is there; returns the file once it has `size` bytes.

    An interrupted transfer is resumed with `Range: bytes=N-` (a server that ignores it starts
    over); a response that would exceed `artifact.size` is cut off and refused.

    Raises:
        UpdateFailed: the artifact cannot be fetched within the attempts and time allowed.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    problem = "no attempt made"
    try:
        async with (
            asyncio.timeout(timeout_s),
            httpx.AsyncClient(timeout=httpx.Timeout(READ_TIMEOUT_S), follow_redirects=True) as client,
        ):
            for attempt in range(attempts):
                if attempt:
                    await sleep(min(2.0**attempt, 30.0))
                try:
                    if await _fetch(client, artifact, part, progress):
                        return part
                    problem = "the server ended the transfer early"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"[:200]
                log.warning("update.download_retry", attempt=attempt + 1, problem=problem)
    except TimeoutError:
        problem = f"not finished within {timeout_s:g} s"
    raise UpdateFailed("downloading", f"download_failed: {problem}")


async def _fetch(
    client: httpx.AsyncClient, artifact: Artifact, part: Path, progress: Callable[[int], Awaitable[None]] | None
) -> bool:
    have = part.stat().st_size if part.exists() else 0
    if have > artifact.size:
        part.unlink()
        have = 0
    if have == artifact.size:
        return True
    headers = {"Range": f"bytes={have}-"} if have else {}
    async with client.stream("GET", artifact.url, headers=headers) as response:
        if response.status_code == 416 and have:
            part.unlink()  # what we have is not a prefix of what the server has: start over
            return False
        if response.status_code not in {200, 206}:
            raise UpdateFailed("downloading", f"download_failed: the server answered HTTP {response.status_code}")
        if response.status_code == 200:
            have = 0  # the server sends the whole file
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and have + int(length) > artifact.size:
            raise UpdateFailed("downloading", f"size_mismatch: the server offers more than {artifact.size} bytes")
        with part.open("r+b" if have else "wb") as fh:
            fh.seek(have)
            fh.truncate()
            async for chunk in response.aiter_bytes():
                if have + len(chunk) > artifact.size:
                    raise UpdateFailed(
                        "downloading", f"size_mismatch: the artifact is larger than {artifact.size} bytes"
                    )
                fh.write(chunk)
                have += len(chunk)
                if progress is not None:
                    await progress(have)
            fh.flush()
            os.fsync(fh.fileno())
    return have == artifact.size


def sha256_of(path: Path) -> str:
    """The file's sha256, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_wheel(job: Job, doc: dict[str, Any], wheel: Path, key: signing.VerifyKey | None) -> str | None:
    """Why the downloaded wheel must not be installed (size, sha256, the job's signature), or None."""
    size = wheel.stat().st_size
    if size != job.artifact.size:
        return f"size_mismatch: {size} bytes, the job says {job.artifact.size}"
    if sha256_of(wheel) != job.artifact.sha256:
        return "sha256_mismatch: the artifact is not the one the job names"
    if key is None or not signing.verify(doc, key):
        return "bad_signature: the job is not signed with the fleet's key"
    return None


# -- installing ------------------------------------------------------------------------------


def inherited_paths() -> list[str]:
    """The running release's package directories, which an `inherit` release reads its dependencies from."""
    return [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]


async def _run(*argv: str, timeout_s: float) -> tuple[int, str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -9, f"{Path(argv[0]).name} did not finish within {timeout_s:g} s"
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


async def install(layout: Layout, version: str, wheel: Path, *, dependencies: str) -> Path:
    """A new virtualenv at releases/<version> with the wheel installed, checked by running it.

    Raises:
        UpdateFailed: the virtualenv or the installation failed, or the release is not `version`.
    """
    target = layout.release(version)
    if target.exists():
        # Unfinished or from an earlier, rolled-back attempt: a virtualenv cannot be moved, so
        # it is made again in place.
        await asyncio.to_thread(shutil.rmtree, target)
    layout.releases.mkdir(parents=True, exist_ok=True)
    code, out = await _run(sys.executable, "-m", "venv", str(target), timeout_s=INSTALL_TIMEOUT_S)
    if code:
        raise UpdateFailed("installing", f"venv_failed: {_tail(out)}")
    python = str(target / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--no-input", "--no-cache-dir"]
    if dependencies == "inherit":
        site = await _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", timeout_s=60)
        (Path(site[1].strip()) / INHERIT_PTH).write_text("\n".join(inherited_paths()) + "\n", encoding="utf-8")
        pip += ["--no-deps", "--no-index"]
    # pip wants the wheel's proper file name (name-version-tags.whl).
    code, out = await _run(*pip, str(wheel), timeout_s=INSTALL_TIMEOUT_S)
    if code:
        raise UpdateFailed("installing", f"pip_failed: {_tail(out)}")
    code, out = await _run(str(target / "bin" / "kiosk"), "--version", timeout_s=120)
    if code or out.strip() != f"kiosk {version}":
        raise UpdateFailed("installing", f"version_mismatch: the new release says {_tail(out)!r}, the job {version!r}")
    (target / COMPLETE_MARK).write_text(f"{version}\n", encoding="utf-8")
    return target


def _tail(text: str, limit: int = 300) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-limit:]


# -- the boot guard ---------------------------------------------------------------------------


def boot_guard(settings: Settings, *, clock: Callable[[], float] = time.time) -> int | None:
    """At the start of `kiosk run`: count a trial release's starts and switch back when it is failing.

    Returns an exit code when kiosk must exit at once (it switched back: the service manager
    starts the previous release), else None.
    """
    state_dir = settings.state_dir
    pending = load_pending(state_dir)
    if pending is None or pending.phase != "trial":
        return None
    layout = Layout(settings.fleet.releases_dir)
    if pending.version != __version__:
        # The switch never happened (a crash between writing the trial and the rename), or a
        # person switched by hand: this release goes on; the job failed.
        reason = f"switch_failed: kiosk {__version__} started instead of {pending.version}"
        save_pending(state_dir, replace(pending, phase="rolled_back", reason=reason))
        log.error("update.not_switched", job_id=pending.job_id, version=pending.version, running=__version__)
        return None
    now = clock()
    first = pending.first_boot_at if pending.first_boot_at is not None else now
    boots = pending.boots + 1
    deadline = settings.fleet.update_commit_deadline_s
    if boots > MAX_TRIAL_BOOTS:
        reason = f"not_healthy: kiosk {pending.version} stopped {boots - 1} times before it connected"
    elif now > first + deadline:
        reason = f"not_healthy: kiosk {pending.version} did not reach READY and connect within {deadline:g} s"
    else:
        save_pending(state_dir, replace(pending, boots=boots, first_boot_at=first))
        log.info("update.trial_boot", job_id=pending.job_id, version=pending.version, boot=boots)
        return None
    roll_back(layout, state_dir, pending, reason)
    return EXIT_RESTART


def roll_back(layout: Layout, state_dir: Path, pending: Pending, reason: str) -> None:
    """Switch `current` back to the previous release and record why, for it to report."""
    layout.switch(pending.previous)
    save_pending(state_dir, replace(pending, phase="rolled_back", reason=reason))
    log.error("update.rolled_back", job_id=pending.job_id, version=pending.version, reason=reason)


# -- the job runner ---------------------------------------------------------------------------


class Updater:
    """Runs `software_update` jobs (the fleet agent's `Jobs` port) and commits or reports after a restart.

    Args:
        host: the running service.
        agent: reports go through its `job_update`, signatures through its key.
        clock: wall-clock seconds.
    """

    def __init__(self, host: Host, agent: FleetAgent, *, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.agent = agent
        self._clock = clock
        settings = host.settings
        self.layout = Layout(settings.fleet.releases_dir)
        self.state_dir = settings.state_dir
        self._task: asyncio.Task[None] | None = None
        self._trial = False

    def busy(self) -> bool:
        """A job is running, or this start is a trial not yet committed."""
        return self._trial or (self._task is not None and not self._task.done())

    async def _report(
        self,
        job_id: str,
        status: str,
        step: str | None = None,
        *,
        progress: float | None = None,
        reason: str | None = None,
    ) -> None:
        if progress is None and step is not None:
            progress = PROGRESS.get(step)
        log.info("update.report", job_id=job_id, status=status, step=step, progress=progress, reason=reason)
        await self.agent.job_update(job_id, status, step=step, progress=progress, reason=reason)

    async def start(self, job_id: str, doc: dict[str, Any]) -> None:
        """Check the job and run it in the background; returns at once."""
        try:
            job = parse_job(job_id, doc)
        except ValueError as exc:
            await self._report(job_id, "REJECTED", reason=str(exc))
            return
        if self.agent.key is None:
            await self._report(
                job_id, "REJECTED", reason="unsigned: software updates need fleet.signing_public_key on the kiosk"
            )
            return
        if self.busy():
            await self._report(job_id, "REJECTED", reason="busy: another software update is in progress")
            return
        if job.version == __version__:
            await self._report(job_id, "SUCCEEDED", "committed", reason=f"kiosk {__version__} is running already")
            return
        self._task = asyncio.get_running_loop().create_task(self._run_job(job, doc), name=f"update-{job_id}")

    async def _run_job(self, job: Job, doc: dict[str, Any]) -> None:
        maintenance_set = False
        try:
            await self._report(job.job_id, "IN_PROGRESS", "downloading")
            wheel = await self._download(job)
            await self._report(job.job_id, "IN_PROGRESS", "verifying")
            await self._verify(job, doc, wheel)
            await self._report(job.job_id, "IN_PROGRESS", "installing")
            await install(self.layout, job.version, wheel, dependencies=self.host.settings.fleet.update_dependencies)
            await self._report(job.job_id, "IN_PROGRESS", "waiting_idle")
            self._enter_maintenance(job.version)
            maintenance_set = True
            await self._wait_idle()
            await self._report(job.job_id, "IN_PROGRESS", "switching")
            await asyncio.to_thread(self._switch, job)
        except UpdateFailed as exc:
            await self._fail(job, exc.step, exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must still end the job with a report
            log.exception("update.crashed", job_id=job.job_id)
            await self._fail(job, "installing", f"internal_error: {type(exc).__name__}")
        else:
            log.info("update.restarting", job_id=job.job_id, version=job.version, exit_code=EXIT_RESTART)
            self.host.request_stop(EXIT_RESTART)
            return
        if maintenance_set:
            self._leave_maintenance()

    async def _fail(self, job: Job, step: str, reason: str) -> None:
        log.error("update.failed", job_id=job.job_id, step=step, reason=reason)
        target = self.layout.release(job.version)
        if self.layout.active() != self.layout.link_text(job.version) and target.exists():
            await asyncio.to_thread(shutil.rmtree, target, True)  # noqa: FBT003 - ignore_errors
        await self._report(job.job_id, "FAILED", step, reason=reason)

    async def _download(self, job: Job) -> Path:
        part = self.layout.releases / DOWNLOADS / f"{job.artifact.sha256}.part"
        reported = [0]

        async def progress(have: int) -> None:
            # Every quarter: each report is a durable outbox row, not worth one per chunk.
            quarter = have * 4 // job.artifact.size
            if quarter > reported[0] and have < job.artifact.size:
                reported[0] = quarter
                await self._report(job.job_id, "IN_PROGRESS", "downloading", progress=round(quarter * 10.0, 1))

        await download(job.artifact, part, progress=progress)
        name = Path(urlsplit(job.artifact.url).path).name
        if not name.endswith(".whl"):
            name = f"kiosk-{job.version}-py3-none-any.whl"
        wheel = part.with_name(name)
        part.replace(wheel)
        return wheel

    async def _verify(self, job: Job, doc: dict[str, Any], wheel: Path) -> None:
        problem = await asyncio.to_thread(check_wheel, job, doc, wheel, self.agent.key)
        if problem is not None:
            wheel.unlink(missing_ok=True)
            raise UpdateFailed("verifying", problem)

    def _enter_maintenance(self, version: str) -> None:
        self.host.availability.maintenance = f"installing software update {version}"
        self.host.announce_soon()

    def _leave_maintenance(self) -> None:
        self.host.availability.maintenance = self.agent.maintenance.reason()
        self.host.announce_soon()

    async def _wait_idle(self) -> None:
        """Until no order is open (new ones are refused meanwhile), for IDLE_SETTLE_S in a row."""
        runner = self.host.runner
        try:
            async with asyncio.timeout(IDLE_TIMEOUT_S):
                quiet_since: float | None = None
                while True:
                    now = time.monotonic()
                    if runner.open_orders:
                        quiet_since = None
                    elif quiet_since is None:
                        quiet_since = now
                    elif now - quiet_since >= IDLE_SETTLE_S:
                        return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise UpdateFailed("waiting_idle", f"not_idle: orders were still open after {IDLE_TIMEOUT_S:g} s") from None

    def _switch(self, job: Job) -> None:
        previous = self.layout.active()
        if previous is None:
            raise UpdateFailed(
                "switching",
                f"no_current_release: {self.layout.current} is not a symlink to a release; see docs/install.md",
            )
        save_pending(self.state_dir, Pending(job.job_id, job.version, previous, "trial"))
        try:
            self.layout.switch(self.layout.link_text(job.version))
        except OSError as exc:
            clear_pending(self.state_dir)
            raise UpdateFailed("switching", f"switch_failed: {exc}") from None

    # -- after a restart ----------------------------------------------------------------------

    async def run(self) -> None:
        """At start: report a rolled-back update, or commit this trial release once it is connected."""
        pending = await asyncio.to_thread(load_pending, self.state_dir)
        if pending is None:
            return
        if pending.phase == "rolled_back":
            # The failed release goes first: a later job for the same version installs afresh.
            target = self.layout.release(pending.version)
            if self.layout.active() != self.layout.link_text(pending.version) and target.exists():
                await asyncio.to_thread(shutil.rmtree, target, True)  # noqa: FBT003 - ignore_errors
            await self._report(pending.job_id, "FAILED", "rolled_back", reason=pending.reason)
            await asyncio.to_thread(clear_pending, self.state_dir)
            return
        if pending.phase != "trial" or pending.version != __version__:
            return
        self._trial = True
        await self._report(pending.job_id, "IN_PROGRESS", "health_check")
        deadline = self.host.settings.fleet.update_commit_deadline_s
        first = pending.first_boot_at if pending.first_boot_at is not None else self._clock()
        try:
            async with asyncio.timeout(max(0.0, first + deadline - self._clock())):
                await self.host.bus.wait_connected()
        except TimeoutError:
            reason = f"not_healthy: kiosk {pending.version} did not connect to the broker within {deadline:g} s"
            await asyncio.to_thread(roll_back, self.layout, self.state_dir, pending, reason)
            self.host.request_stop(EXIT_RESTART)
            return
        await self._report(pending.job_id, "SUCCEEDED", "committed", reason=f"kiosk {__version__} is running")
        await asyncio.to_thread(clear_pending, self.state_dir)
        self._trial = False
        log.info("update.committed", job_id=pending.job_id, version=pending.version, previous=pending.previous)
