"""The `kiosk` command line.

Exit codes: 0 ok, 2 usage error, 78 configuration error, 1 anything else. Errors go to stderr as
one sentence naming what is at fault; a traceback only with `--debug`. Each command imports what
it needs when it runs, so `kiosk run` never loads the simulator.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from kiosk import __version__, logs
from kiosk.errors import ConfigError, KioskError, UsageError
from kiosk.fleet import cli as fleet_cli
from kiosk.logs import REDACTOR

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_CONFIG = 78


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see '{self.prog} --help'")


def _cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    from kiosk import settings  # noqa: PLC0415 - each command imports what it needs

    loaded = settings.load(args.config)
    REDACTOR.add(loaded.settings.secret_values())
    source = loaded.config_file or "(none: environment and defaults only)"
    print(f"# kiosk {__version__}: configuration is valid", file=out)
    print(f"# config file: {source}", file=out)
    rows = settings.effective(loaded)
    width = max(len(key) for key, _, _ in rows)
    for key, value, origin in rows:
        shown = value
        if key == "stripe.api_version" and value == "(not set)":
            shown = "(the stripe library's pinned version)"
        print(f"{key:<{width}}  {shown}  [{origin}]", file=out)
    return EX_OK


def _cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    del out
    from kiosk import settings  # noqa: PLC0415 - each command imports what it needs

    loaded = settings.load(args.config)
    REDACTOR.add(loaded.settings.secret_values())
    if loaded.settings.fleet.enabled:
        from kiosk.fleet import updates  # noqa: PLC0415 - each command imports what it needs

        # A software update on trial that keeps failing is switched back before anything else —
        # before the daemon's own modules are imported, since a release may fail right there.
        code = updates.boot_guard(loaded.settings)
        if code is not None:
            return code
    from kiosk import service  # noqa: PLC0415 - after the guard, see above

    return service.run(loaded.settings)


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from pathlib import Path  # noqa: PLC0415 - each command imports what it needs

    from kiosk.demo import run  # noqa: PLC0415 - only this command loads the demo and the simulator

    colour = {"auto": None, "always": True, "never": False}[args.color]
    workdir = Path(args.workdir) if args.workdir else None
    return run.run(out, broker=args.broker, colour=colour, workdir=workdir, capture_logs=True)


def _cmd_simulator(args: argparse.Namespace, out: TextIO) -> int:
    from kiosk.simulator import command  # noqa: PLC0415 - only this command loads the simulator

    return command.run(args.host, args.port, out, seed=args.seed)


def _cmd_fleet(args: argparse.Namespace, out: TextIO) -> int:
    return fleet_cli.run(args, out)


def _cmd_reader(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio  # noqa: PLC0415 - each command imports what it needs

    from kiosk import settings  # noqa: PLC0415
    from kiosk.gateway import Gateway  # noqa: PLC0415

    loaded = settings.load(args.config, fallbacks={"id": "reader-admin", "stripe.reader_id": "tmr_unset"})
    REDACTOR.add(loaded.settings.secret_values())
    configured = loaded.settings.stripe.reader_id

    async def work() -> int:
        async with Gateway.from_settings(loaded.settings) as gateway:
            if args.reader_command == "register":
                reader = await gateway.register_reader(args.code, label=args.label, location=args.location)
                print(f"registered {reader.id} ({reader.device_type}, {reader.status})", file=out)
                print(f'set stripe.reader_id = "{reader.id}" (or KIOSK_STRIPE__READER_ID={reader.id})', file=out)
                return EX_OK
            rows = await gateway.list_readers()
            if not rows:
                print("no readers registered; register one with: kiosk reader register CODE", file=out)
            for reader, label in rows:
                mark = "*" if reader.id == configured else " "
                print(
                    f"{mark} {reader.id}  {reader.device_type or '-':<22} {reader.status or '-':<8} {label or ''}",
                    file=out,
                )
            return EX_OK

    return asyncio.run(work())


Command = Callable[[argparse.Namespace, TextIO], int]


def _print_traceback(err: TextIO) -> None:
    # Tracebacks quote exception messages and source lines: secrets are removed from them too.
    print(REDACTOR.scrub(traceback.format_exc()).rstrip(), file=err)


def _parser() -> tuple[_Parser, dict[str, Command]]:
    parser = _Parser(prog="kiosk", description="Card payments for unattended vending machines.")
    parser.add_argument("--version", action="version", version=f"kiosk {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands: dict[str, Command] = {}

    check = sub.add_parser("check-config", help="validate and print the effective configuration")
    check.add_argument("--config", metavar="PATH", help="TOML file (default: $KIOSK_CONFIG, /etc/kiosk/kiosk.toml)")
    commands["check-config"] = _cmd_check_config

    run = sub.add_parser("run", help="the payments daemon (systemd Type=notify)")
    run.add_argument("--config", metavar="PATH", help="TOML file (default: $KIOSK_CONFIG, /etc/kiosk/kiosk.toml)")
    commands["run"] = _cmd_run

    demo = sub.add_parser("demo", help="the whole system on this machine running scripted scenarios")
    demo.add_argument(
        "--broker",
        choices=("auto", "embedded", "mosquitto"),
        default="auto",
        help="MQTT broker: a private mosquitto when installed, else the embedded one (default auto)",
    )
    demo.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the timeline (default auto: on a terminal, unless NO_COLOR is set)",
    )
    demo.add_argument("--workdir", metavar="PATH", help="keep the daemon's journal and logs here (default: a temp dir)")
    commands["demo"] = _cmd_demo

    simulator = sub.add_parser("simulator", help="the Stripe API simulator alone (docs/simulator.md)")
    simulator.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    simulator.add_argument("--port", type=int, default=12111, help="port (default 12111; 0 picks one)")
    simulator.add_argument("--seed", type=int, default=0, help="seed for ids and random faults (default 0)")
    commands["simulator"] = _cmd_simulator

    reader = sub.add_parser("reader", help="register and list the account's card readers")
    reader_sub = reader.add_subparsers(dest="reader_command", metavar="ACTION", required=True, parser_class=_Parser)
    register = reader_sub.add_parser("register", help="register a reader with the code it shows")
    register.add_argument("code", help="registration code from the reader (test mode: simulated-wpe or simulated-s700)")
    register.add_argument("--label", help="a name to recognise it by, e.g. the machine's location")
    register.add_argument("--location", metavar="tml_…", help="the Terminal location to register it to")
    listing = reader_sub.add_parser("list", help="list the account's readers (* marks the configured one)")
    for p in (register, listing):
        p.add_argument("--config", metavar="PATH", help="TOML file (default: $KIOSK_CONFIG, /etc/kiosk/kiosk.toml)")
    commands["reader"] = _cmd_reader

    fleet = sub.add_parser("fleet", help="fleet tools: keygen, sign (docs: README, Fleet)")
    fleet_cli.add_arguments(fleet)
    commands["fleet"] = _cmd_fleet

    return parser, commands


def _dispatch(argv: Sequence[str] | None, out: TextIO) -> int:
    parser, commands = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and --version: argparse has printed and wants out
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    if args.command is None:
        parser.print_help(out)
        return EX_USAGE
    return commands[args.command](args, out)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command line; returns the exit code."""
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    # Once per process, here: every command logs through it, secrets filtered.
    logs.configure(level="debug" if debug else "info", stream=stderr)
    try:
        return _dispatch(argv, stdout)
    except UsageError as exc:
        print(f"kiosk: {exc}", file=stderr)
        return EX_USAGE
    except ConfigError as exc:
        if debug:
            _print_traceback(stderr)
        for problem in exc.problems:
            print(f"kiosk: configuration error: {REDACTOR.scrub(problem)}", file=stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the top of the program: one sentence, not a traceback
        if debug:
            _print_traceback(stderr)
        kind = "" if isinstance(exc, KioskError) else f"{type(exc).__name__}: "
        print(f"kiosk: {kind}{REDACTOR.scrub(str(exc))}", file=stderr)
        if not debug:
            print("kiosk: run again with --debug for details", file=stderr)
        return EX_FAILURE
