"""`kiosk fleet keygen|sign`: an operator's key pair and signed fleet payloads.

`keygen` writes a new Ed25519 private key (PKCS#8 PEM, mode 0600) and prints the public key
for `fleet.signing_public_key`. `sign` reads a JSON object (a `config/desired` payload, a
command request or a job document) from `--file` or stdin and prints it with `sig` set; a
command without `request_id` or `expires_at` gets a fresh one (valid for `--expires-in`).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from kiosk.errors import UsageError

if TYPE_CHECKING:
    import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `fleet` subcommands."""
    sub = parser.add_subparsers(dest="fleet_command", metavar="FLEET_COMMAND", required=True)
    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signing fleet messages")
    keygen.add_argument("--out", metavar="PATH", required=True, help="where to write the private key (PEM, 0600)")
    sign = sub.add_parser("sign", help="print a fleet payload (JSON) signed with a private key")
    sign.add_argument("--key", metavar="PRIVATE.pem", required=True, help="the private key from `kiosk fleet keygen`")
    sign.add_argument("--file", metavar="PAYLOAD.json", help="the payload (default: standard input)")
    sign.add_argument(
        "--command",
        dest="as_command",  # `command` is the top-level subcommand's
        action="store_true",
        help="the payload is a command request: add request_id and expires_at when missing",
    )
    sign.add_argument("--expires-in", type=float, default=300, metavar="S", help="with --command (default 300 s)")
    # The operators' console: status, config, cmd, update (kiosk/fleet/console.py).
    from kiosk.fleet import console  # noqa: PLC0415 - keeps aiomqtt out of `kiosk --help`'s imports

    console.add_arguments(sub)


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run a `fleet` subcommand; returns the exit code."""
    from kiosk.fleet import signing  # noqa: PLC0415 - loads cryptography only when needed

    if args.fleet_command in {"status", "config", "cmd", "update"}:
        from kiosk.fleet import console  # noqa: PLC0415 - the console's commands

        return console.run(args, out)
    if args.fleet_command == "keygen":
        path = Path(args.out)
        key = signing.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise UsageError(f"{path} exists already; choose another --out or move it away") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(signing.private_pem(key))
        print(f"# private key written to {path}; keep it off the kiosks", file=out)
        print("# set on every kiosk: fleet.signing_public_key (KIOSK_FLEET__SIGNING_PUBLIC_KEY)", file=out)
        print(signing.public_key_text(key.public_key()), file=out)
        return 0
    try:
        key = signing.load_private(Path(args.key).read_bytes())
    except OSError as exc:
        raise UsageError(f"--key {args.key} cannot be read ({exc.strerror})") from None
    try:
        text = Path(args.file).read_text(encoding="utf-8") if args.file else sys.stdin.read()
        payload: Any = json.loads(text)
    except OSError as exc:
        raise UsageError(f"--file {args.file} cannot be read ({exc.strerror})") from None
    except ValueError:
        raise UsageError("the payload is not JSON; give a JSON object") from None
    if not isinstance(payload, dict):
        raise UsageError("the payload must be a JSON object")
    if args.as_command:
        payload.setdefault("request_id", uuid.uuid4().hex)
        expires = datetime.now(UTC) + timedelta(seconds=args.expires_in)
        payload.setdefault("expires_at", expires.isoformat(timespec="seconds").replace("+00:00", "Z"))
        payload.setdefault("args", {})
    print(json.dumps(signing.sign(payload, key), ensure_ascii=False, separators=(",", ":")), file=out)
    return 0
