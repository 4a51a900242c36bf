"""Fleet commands (`cmd/{name}/req` → `cmd/{name}/res`): exactly one response per request.

The checks, in order, each answered with an error response and no other effect:
unreadable payload or `request_id` (`bad_request`), signature (`bad_signature`, when
`fleet.signing_public_key` is set), a `request_id` already answered (the original response is
sent again: a replay changes nothing), `expires_at` passed (`expired`; required and at most
`MAX_AHEAD_S` ahead when signing is on, so a captured command cannot be replayed after its
request id was forgotten), an unknown name (`unknown_command`), the same command still running
(`busy`). A request id is recorded before its command runs, and its response is stored with it
and sent through the journal's outbox, so a crash never yields a second execution.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiosk import logs
from kiosk.fleet import payloads, signing

if TYPE_CHECKING:
    from kiosk.fleet.store import FleetStore

log = logs.get("fleet")

MAX_AHEAD_S = 7 * 24 * 3600.0  # answered request ids are kept this long (FleetStore.prune)


class CommandFailed(Exception):  # noqa: N818 - the error response of a command
    """A command ran but could not do what was asked."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
Respond = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Command:
    """A registered command: its handler, and whether it runs beside the bus (long ones do)."""

    handler: Handler
    background: bool = False


class Desk:
    """Checks, runs and answers commands.

    Args:
        store: where answered request ids live.
        respond: publishes a response for a command name (durably, through the outbox).
        key: the fleet's public key, or None when commands need no signature.
        clock: wall-clock seconds.
    """

    def __init__(
        self,
        store: FleetStore,
        respond: Respond,
        key: signing.VerifyKey | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._respond = respond
        self._key = key
        self._clock = clock
        self.commands: dict[str, Command] = {}
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self, name: str, handler: Handler, *, background: bool = False) -> None:
        """Serve `name` with `handler`."""
        self.commands[name] = Command(handler, background)

    def running(self, name: str) -> bool:
        """Whether a command of this name is in progress."""
        return name in self._running

    async def _answer(self, name: str, request_id: str | None, error: tuple[str, str]) -> None:
        log.warning("fleet.command_refused", command=name[:64], request_id=request_id, code=error[0], problem=error[1])
        await self._respond(name, payloads.response(request_id, ts=self._clock(), error=error))

    async def handle(self, name: str, raw: bytes) -> None:  # noqa: C901, PLR0911, PLR0912 - a flat list of refusals, in protocol order
        """Answer one request; returns once it is recorded (long commands go on in the background)."""
        try:
            data = payloads.load(raw)
        except payloads.BadPayload as exc:
            await self._answer(name, None, ("bad_request", str(exc)))
            return
        request_id = payloads.request_id(data)
        if request_id is None:
            await self._answer(name, None, ("bad_request", "request_id must be text of 1 to 64 characters"))
            return
        if self._key is not None and not signing.verify(data, self._key):
            await self._answer(name, request_id, ("bad_signature", "the request is not signed with the fleet's key"))
            return
        previous = await self._store.journal.call(self._store.answered, request_id)
        if previous is not None:
            log.info("fleet.command_repeated", command=name, request_id=request_id)
            if previous:
                await self._respond(name, previous)
            else:
                await self._answer(name, request_id, ("duplicate", "this request id is already being handled"))
            return
        now = self._clock()
        try:
            expires = payloads.timestamp(data.get("expires_at"), "expires_at")
        except payloads.BadPayload as exc:
            await self._answer(name, request_id, ("bad_request", str(exc)))
            return
        if expires is None and self._key is not None:
            await self._answer(name, request_id, ("bad_request", "a signed request needs expires_at"))
            return
        if expires is not None and expires <= now:
            await self._answer(name, request_id, ("expired", "expires_at has passed; nothing was done"))
            return
        if expires is not None and self._key is not None and expires > now + MAX_AHEAD_S:
            await self._answer(name, request_id, ("bad_request", "expires_at is more than 7 days ahead"))
            return
        command = self.commands.get(name)
        if command is None:
            known = ", ".join(sorted(self.commands))
            await self._answer(
                name, request_id, ("unknown_command", f"kiosk has no command {name!r}; it knows {known}")
            )
            return
        if name in self._running:
            await self._answer(name, request_id, ("busy", f"a {name} command is still in progress; try again later"))
            return
        args = data.get("args") or {}
        if not isinstance(args, dict):
            await self._answer(name, request_id, ("bad_request", "args must be an object"))
            return
        if not await self._store.journal.call(self._store.remember, request_id, name, None, now):
            return  # recorded between the check and now: the other delivery answers
        log.info("fleet.command", command=name, request_id=request_id)
        self._running.add(name)
        if command.background:
            task = asyncio.get_running_loop().create_task(self._run(name, request_id, command, args))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            await self._run(name, request_id, command, args)

    async def _run(self, name: str, request_id: str, command: Command, args: dict[str, Any]) -> None:
        try:
            try:
                data = await command.handler(args)
            except CommandFailed as exc:
                body = payloads.response(request_id, ts=self._clock(), error=(exc.code, exc.message))
            except Exception as exc:  # a bug must still get its one response
                log.exception("fleet.command_failed", command=name)
                body = payloads.response(request_id, ts=self._clock(), error=("internal_error", type(exc).__name__))
            else:
                body = payloads.response(request_id, ts=self._clock(), data=data or {})
            await self._store.journal.call(self._store.set_response, request_id, body)
            await self._respond(name, body)
        finally:
            self._running.discard(name)
