"""The command line: check-config's output, exit codes, one-sentence errors, no secret anywhere."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kiosk import __version__, cli, logs, settings

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "kiosk.toml"

API_KEY = "sk_test_51KioskTestSecretValue0123456789"
LIVE_KEY = "sk_live_51KioskLiveSecretValue0123456789"
PASSWORD = "correct-horse-battery-staple"  # noqa: S105 - a test value the output must never show
SECRETS = (API_KEY, LIVE_KEY, PASSWORD, "51KioskTestSecretValue", "51KioskLiveSecretValue")

REQUIRED = {
    "KIOSK_ID": "vm-lobby-1",
    "KIOSK_STRIPE__API_KEY": API_KEY,
    "KIOSK_STRIPE__READER_ID": "tmr_FDOt2wlRZEdpd7",
}
# Variables that would make a test depend on the machine it runs on.
AMBIENT = ("KIOSK_", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_")


@pytest.fixture(name="env")
def fixture_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A process environment with the required settings and nothing else of kiosk's."""
    for name in list(os.environ):
        if name.startswith(AMBIENT):
            monkeypatch.delenv(name)
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    yield monkeypatch
    logs.reset()  # main() configured logging for the process


def run(*argv: str) -> tuple[int, str, str]:
    """cli.main in this process."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def run_process(*argv: str, environ: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """`python -m kiosk` as a separate process, as an operator or systemd runs it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **environ}
    proc = subprocess.run(
        [sys.executable, "-m", "kiosk", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def table(out: str) -> dict[str, tuple[str, str]]:
    """check-config's rows: key → (value, source)."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("#"):
            continue
        key, rest = line.split(maxsplit=1)
        value, _, source = rest.rpartition("  [")
        rows[key] = (value.strip(), source.rstrip("]"))
    return rows


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_check_config_prints_each_value_with_its_source_and_masks_secrets(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write(tmp_path / "kiosk.toml", 'max_amount = 2500\n[mqtt]\nurl = "mqtt://127.0.0.1:1884"\n')
    creds = tmp_path / "credentials"
    creds.mkdir()
    write(creds / "stripe_api_key", LIVE_KEY)
    env.setenv("CREDENTIALS_DIRECTORY", str(creds))
    env.setenv("KIOSK_MQTT__URL", "mqtt://127.0.0.1:1885")
    env.setenv("KIOSK_MQTT__PASSWORD", PASSWORD)

    code, out, err = run("check-config", "--config", str(config))

    assert (code, err) == (0, "")
    assert out.startswith(f"# kiosk {__version__}: configuration is valid\n# config file: {config}\n")
    rows = table(out)
    assert rows["max_amount"] == ("2500", "file")
    assert rows["mqtt.url"] == ("mqtt://127.0.0.1:1885", "env")
    assert rows["id"] == ("vm-lobby-1", "env")
    assert rows["stripe.api_key"] == ("sk_live_********", "credential")
    assert rows["mqtt.password"] == ("********", "env")
    assert rows["payments.card_timeout_s"] == ("30", "default")
    assert rows["stripe.api_version"] == ("(the stripe library's pinned version)", "default")
    every = {key for key, _, _ in settings.effective(settings.load(config))}
    assert rows.keys() == every
    assert_no_secret(out, err)


def test_check_config_reads_kiosk_config_when_no_option_is_given(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write(tmp_path / "kiosk.toml", 'currency = ["usd", "cad"]\n')
    env.setenv("KIOSK_CONFIG", str(config))
    code, out, _ = run("check-config")
    assert code == 0
    assert f"# config file: {config}\n" in out
    assert table(out)["currency"] == ("usd, cad", "file")


def test_the_example_config_checks_out_with_required_values_from_the_environment(tmp_path: Path) -> None:
    code, out, err = run_process("check-config", "--config", str(EXAMPLE), environ=REQUIRED, cwd=tmp_path)
    assert (code, err) == (0, "")
    assert "configuration is valid" in out
    rows = table(out)
    assert rows["stripe.api_key"] == ("sk_test_********", "env")
    assert rows["mqtt.url"] == ("mqtt://127.0.0.1:1883", "default")
    assert_no_secret(out, err)


# (the file's content, extra environment, the key the sentence names, a phrase it must contain)
INVALID: list[tuple[str, dict[str, str], str, str]] = [
    ('[stripe]\nreader_id = "abc"\n', {}, "stripe.reader_id", "'abc' is not a reader id; it looks like tmr_"),
    ("[payments]\ncard_timeout_s = -5\n", {}, "payments.card_timeout_s", "above 0"),
    ("[payments]\nvend_result_timeout_s = -1\n", {}, "payments.vend_result_timeout_s", "above 0"),
    ('[mqtt]\nurl = "127.0.0.1:1883"\n', {}, "mqtt.url", "must start with mqtt://"),
    ('[mqtt]\nurl = "mqtt://127.0.0.1:70000"\n', {}, "mqtt.url", "port"),
    ('[mqtt]\nurl = "mqtt://127.0.0.1:1883/vend/v1"\n', {}, "mqtt.url", "only a scheme, a host and a port"),
    ("", {"KIOSK_STRIPE__API_KEY": ""}, "stripe.api_key", "not a Stripe secret"),
    ('id = "vm lobby #1"\n', {}, "id", "1 to 64 characters"),
    ('currency = "dollars"\n', {}, "currency", "not a lower-case ISO 4217 code"),
    ("[payments]\nretries = 3\n", {}, "payments.retries", "is not a setting kiosk knows"),
]


@pytest.mark.parametrize(("toml", "extra", "key", "says"), INVALID)
def test_an_invalid_setting_exits_78_with_one_sentence(
    env: pytest.MonkeyPatch, tmp_path: Path, *, toml: str, extra: dict[str, str], key: str, says: str
) -> None:
    for name in REQUIRED:
        # What the file sets must come from the file.
        if settings.env_name(key) == name or (key == "id" and name == "KIOSK_ID"):
            env.delenv(name)
    for name, value in extra.items():
        env.setenv(name, value)
    code, out, err = run("check-config", "--config", str(write(tmp_path / "kiosk.toml", toml)))
    assert code == 78
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"kiosk: configuration error: {key} ")
    assert says in line
    assert "Traceback" not in err
    assert_no_secret(out, err)


def test_a_missing_api_key_exits_78(env: pytest.MonkeyPatch) -> None:
    env.delenv("KIOSK_STRIPE__API_KEY")
    code, out, err = run("check-config", "--config", str(EXAMPLE))
    assert (code, out) == (78, "")
    assert err == (
        "kiosk: configuration error: stripe.api_key: is required; "
        "set it with KIOSK_STRIPE__API_KEY or the stripe_api_key credential\n"
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (f'[stripe]\napi_key = {API_KEY}\nreader_id = "tmr_x"\n', "is not valid TOML (Invalid value (at line 2"),
        ("[mqtt\nurl = 1\n", "is not valid TOML"),
        (None, "does not exist; pass an existing file with --config"),
    ],
)
def test_an_unreadable_config_file_exits_78(
    env: pytest.MonkeyPatch, tmp_path: Path, content: str | None, says: str
) -> None:
    del env
    config = tmp_path / "kiosk.toml"
    if content is not None:
        write(config, content)
    code, out, err = run("check-config", "--config", str(config))
    assert (code, out) == (78, "")
    [line] = err.splitlines()
    assert line.startswith(f"kiosk: configuration error: config file {config} ")
    assert says in line
    assert_no_secret(err)


def test_several_problems_are_one_line_each(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.delenv("KIOSK_STRIPE__READER_ID")
    env.setenv("KIOSK_MQTT__URL", "mqtt//broker")
    code, _, err = run("check-config", "--config", str(write(tmp_path / "k.toml", "max_amount = 0\n")))
    assert code == 78
    keys = sorted(line.split()[3] for line in err.splitlines())
    assert keys == ["max_amount", "mqtt.url", "stripe.reader_id:"]


@pytest.mark.parametrize(
    ("toml", "environ", "key"),
    [
        ('[stripe]\nreader_id = "abc"\n', {"KIOSK_ID": "vm-1", "KIOSK_STRIPE__API_KEY": API_KEY}, "stripe.reader_id"),
        ("[payments]\ncard_timeout_s = -5\n", REQUIRED, "payments.card_timeout_s"),
        ('[mqtt]\nurl = "broker.local"\n', REQUIRED, "mqtt.url"),
        ("", {"KIOSK_ID": "vm-1", "KIOSK_STRIPE__READER_ID": "tmr_x"}, "stripe.api_key"),
        ("[stripe\n", REQUIRED, "config file"),
    ],
)
def test_as_a_process_an_invalid_setting_exits_78_with_one_sentence(
    tmp_path: Path, toml: str, environ: dict[str, str], key: str
) -> None:
    config = write(tmp_path / "kiosk.toml", toml)
    code, out, err = run_process("check-config", "--config", str(config), environ=environ, cwd=tmp_path)
    assert (code, out) == (78, "")
    [line] = err.splitlines()
    assert line.startswith(f"kiosk: configuration error: {key}")
    assert "Traceback" not in err
    assert_no_secret(out, err)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["check-config", "--nope"],
        ["check-config", "--config"],
        ["--config", "kiosk.toml", "check-config", "extra"],
    ],
)
def test_usage_errors_exit_2(env: pytest.MonkeyPatch, argv: list[str]) -> None:
    del env
    code, out, err = run(*argv)
    assert code == 2
    if argv:
        [line] = err.splitlines()
        assert line.startswith("kiosk: ")
        assert line.endswith("see 'kiosk --help'") or "see 'kiosk check-config --help'" in line
    else:
        assert "check-config" in out  # the help, for someone who typed just `kiosk`
    assert "Traceback" not in err


def test_as_a_process_usage_errors_exit_2_and_version_exits_0(tmp_path: Path) -> None:
    code, _, err = run_process("check-configg", environ={}, cwd=tmp_path)
    assert code == 2
    assert "invalid choice: 'check-configg'" in err
    code, out, _ = run_process("--version", environ={}, cwd=tmp_path)
    assert (code, out) == (0, f"kiosk {__version__}\n")
    code, out, _ = run_process("--help", environ={}, cwd=tmp_path)
    assert code == 0
    assert "check-config" in out


def test_debug_adds_a_traceback_but_never_a_secret(tmp_path: Path) -> None:
    # The key pasted into the wrong setting: the sentence shows the value, redacted.
    config = write(tmp_path / "kiosk.toml", f'[stripe]\nreader_id = "{LIVE_KEY}"\n')
    environ = {"KIOSK_ID": "vm-1", "KIOSK_STRIPE__API_KEY": API_KEY, "KIOSK_MQTT__PASSWORD": PASSWORD}
    code, out, err = run_process("--debug", "check-config", "--config", str(config), environ=environ, cwd=tmp_path)
    assert (code, out) == (78, "")
    assert "Traceback (most recent call last)" in err
    assert "kiosk.errors.ConfigError" in err
    assert err.splitlines()[-1] == (
        "kiosk: configuration error: stripe.reader_id (in the config file): '[REDACTED]' is not a reader id; "
        "it looks like tmr_…"
    )
    assert_no_secret(out, err)
    code, out, err = run_process("check-config", "--config", str(config), environ=environ, cwd=tmp_path)
    assert code == 78
    assert "Traceback" not in err
    assert_no_secret(out, err)


def fail_after_loading(loaded: settings.Loaded) -> list[tuple[str, str, settings.Source]]:
    # A fault nothing real produces on demand: an unexpected error whose text carries secrets.
    password = loaded.settings.mqtt.password.get_secret_value() if loaded.settings.mqtt.password else ""
    raise RuntimeError(f"cannot render {password} with {LIVE_KEY}")


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_exits_1_with_one_sentence_and_no_secret(env: pytest.MonkeyPatch, *, debug: bool) -> None:
    env.setenv("KIOSK_MQTT__PASSWORD", PASSWORD)
    env.setattr(settings, "effective", fail_after_loading)
    code, out, err = run(*(["--debug"] if debug else []), "check-config", "--config", str(EXAMPLE))
    assert code == 1
    assert out.startswith("# kiosk")
    assert "kiosk: RuntimeError: cannot render [REDACTED] with [REDACTED]\n" in err
    if debug:
        assert "Traceback (most recent call last)" in err
        assert "fail_after_loading" in err
    else:
        assert "Traceback" not in err
        assert err.endswith("kiosk: run again with --debug for details\n")
        assert len(err.splitlines()) == 2
    assert_no_secret(out, err)
