"""The systemd notifier against a real AF_UNIX datagram socket, as systemd listens on one."""

from __future__ import annotations

import io
import json
import os
import socket
import uuid
from typing import TYPE_CHECKING

import pytest

from kiosk import logs
from kiosk.systemd import Notifier

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def listen(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture(name="path_socket")
def fixture_path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """systemd's usual /run/systemd/notify, here in tmp_path."""
    path = str(tmp_path / "notify")
    sock = listen(path)
    try:
        yield path, sock
    finally:
        sock.close()


@pytest.fixture(name="abstract_socket")
def fixture_abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    """An abstract-namespace socket, NOTIFY_SOCKET=@name (what systemd uses inside containers)."""
    name = f"kiosk-test-{uuid.uuid4().hex}"
    sock = listen(b"\0" + name.encode())
    try:
        yield f"@{name}", sock
    finally:
        sock.close()


@pytest.fixture(name="captured_logs")
def fixture_captured_logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.reset()
    logs.configure(stream=out)
    yield out
    logs.reset()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


@pytest.mark.parametrize("kind", ["path_socket", "abstract_socket"])
def test_every_message_reaches_the_service_manager(kind: str, request: pytest.FixtureRequest) -> None:
    address, sock = request.getfixturevalue(kind)
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    try:
        assert notifier.ready("serving orders")
        assert received(sock) == ["READY=1", "STATUS=serving orders"]
        assert notifier.ready()
        assert received(sock) == ["READY=1"]
        assert notifier.watchdog()
        assert received(sock) == ["WATCHDOG=1"]
        assert notifier.status("reader offline")
        assert received(sock) == ["STATUS=reader offline"]
        assert notifier.stopping("finishing order o-1")
        assert received(sock) == ["STOPPING=1", "STATUS=finishing order o-1"]
        assert notifier.stopping()
        assert received(sock) == ["STOPPING=1"]
    finally:
        notifier.close()


def test_a_status_cannot_smuggle_another_field(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.status("broker down\nREADY=1")
    assert received(sock) == ["STATUS=broker down READY=1"]
    notifier.close()


def test_close_then_send_again(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.watchdog()
    notifier.close()
    notifier.close()
    assert notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    assert received(sock) == ["WATCHDOG=1"]
    notifier.close()


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_outside_systemd_every_call_is_a_silent_no_op(environ: dict[str, str], captured_logs: io.StringIO) -> None:
    notifier = Notifier(environ)
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert notifier._sock is None
    notifier.close()
    assert captured_logs.getvalue() == ""


def test_a_missing_socket_never_raises_and_is_logged_once(tmp_path: Path, captured_logs: io.StringIO) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.watchdog()
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["systemd.notify_failed"]
    assert lines[0]["level"] == "warning"
    assert lines[0]["fields"] == ["READY=1"]
    notifier.close()


def test_a_closed_socket_never_raises_and_recovery_is_logged(tmp_path: Path, captured_logs: io.StringIO) -> None:
    path = tmp_path / "notify"
    sock = listen(str(path))
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.watchdog()
    sock.close()  # the socket file stays, nobody reads it: connection refused
    assert path.exists()
    assert not notifier.watchdog()
    path.unlink()
    sock = listen(str(path))  # the service manager is back
    try:
        assert notifier.watchdog()
        assert received(sock) == ["WATCHDOG=1"]
    finally:
        sock.close()
        notifier.close()
    events = [json.loads(line)["event"] for line in captured_logs.getvalue().splitlines()]
    assert events == ["systemd.notify_failed", "systemd.notify_recovered"]


def test_an_abstract_socket_nobody_listens_on_never_raises() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": f"@kiosk-test-nobody-{uuid.uuid4().hex}"})
    assert not notifier.ready()
    notifier.close()


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": ""}, 1.5),
        # Meant for another process (our parent, say): not ours to feed.
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-1"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_usec(environ: dict[str, str], interval: float | None) -> None:
    assert Notifier(environ).watchdog_interval == interval
