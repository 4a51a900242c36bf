"""Settings: sources and their precedence, validation sentences, and secrets that never show."""

from __future__ import annotations

import functools
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kiosk import settings
from kiosk.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "kiosk.toml"

API_KEY = "sk_test_51KioskTestSecretValue0123456789"
OTHER_KEY = "rk_live_51KioskCredentialSecret987654"
PASSWORD = "correct-horse-battery-staple"  # noqa: S105 - a test value the output must never show

REQUIRED = {
    "KIOSK_ID": "vm-lobby-1",
    "KIOSK_STRIPE__API_KEY": API_KEY,
    "KIOSK_STRIPE__READER_ID": "tmr_FDOt2wlRZEdpd7",
}


# Never the machine's own /etc/kiosk/kiosk.toml.
load = functools.partial(settings.load, default_file=None)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def problems(config: Path | None, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(config, environ=environ)
    return caught.value.problems


def test_environment_and_defaults_alone_are_enough() -> None:
    loaded = load(None, environ={**REQUIRED, "STATE_DIRECTORY": "/var/lib/kiosk-a:/x"})
    s = loaded.settings
    assert loaded.config_file is None
    assert s.id == "vm-lobby-1"
    assert s.stripe.api_key.get_secret_value() == API_KEY
    assert s.stripe.reader_id == "tmr_FDOt2wlRZEdpd7"
    assert s.mqtt.url == "mqtt://127.0.0.1:1883"
    assert s.currency == ("usd",)
    assert s.max_amount == 10_000
    assert s.payments.card_timeout_s == 30
    assert s.fleet.enabled is True
    # systemd's StateDirectory=: the first of the listed directories.
    assert s.state_dir == Path("/var/lib/kiosk-a")
    assert loaded.sources["state_dir"] == "default"


def test_state_dir_defaults_to_var_lib_kiosk_outside_systemd() -> None:
    assert load(None, environ=REQUIRED).settings.state_dir == Path("/var/lib/kiosk")


def test_later_sources_win_file_then_env_then_credentials(tmp_path: Path) -> None:
    config = write(
        tmp_path / "kiosk.toml",
        """
        id = "from-file"
        max_amount = 500
        [mqtt]
        url = "mqtt://file.example:1883"
        username = "kiosk"
        [stripe]
        reader_id = "tmr_fromfile"
        """,
    )
    creds = tmp_path / "credentials"
    creds.mkdir()
    write(creds / "stripe_api_key", OTHER_KEY + "\n")  # editors add a newline; it is not the key
    write(creds / "mqtt_password", PASSWORD)
    env = {
        "KIOSK_ID": "from-env",
        "KIOSK_MQTT__URL": "mqtts://env.example",
        "KIOSK_MQTT__PASSWORD": "overridden-by-the-credential",
        "KIOSK_STRIPE__API_KEY": API_KEY,
        "CREDENTIALS_DIRECTORY": str(creds),
    }
    loaded = load(config, environ=env)
    s = loaded.settings
    assert s.id == "from-env"
    assert s.max_amount == 500
    assert s.mqtt.url == "mqtts://env.example"
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.tls) == ("env.example", 8883, True)
    assert s.mqtt.username == "kiosk"
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == PASSWORD
    assert s.stripe.api_key.get_secret_value() == OTHER_KEY
    assert s.stripe.reader_id == "tmr_fromfile"
    assert loaded.sources["id"] == "env"
    assert loaded.sources["max_amount"] == "file"
    assert loaded.sources["mqtt.url"] == "env"
    assert loaded.sources["mqtt.username"] == "file"
    assert loaded.sources["mqtt.password"] == "credential"
    assert loaded.sources["stripe.api_key"] == "credential"
    assert loaded.sources["stripe.reader_id"] == "file"
    assert loaded.sources["payments.card_timeout_s"] == "default"
    assert sorted(s.secret_values()) == sorted([OTHER_KEY, PASSWORD])


def test_a_credentials_directory_without_our_files_changes_nothing(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    write(creds / "unrelated", "x")
    loaded = load(None, environ={**REQUIRED, "CREDENTIALS_DIRECTORY": str(creds)})
    assert loaded.sources["stripe.api_key"] == "env"
    assert loaded.settings.mqtt.password is None


def test_the_config_file_comes_from_the_option_else_kiosk_config(tmp_path: Path) -> None:
    a = write(tmp_path / "a.toml", 'id = "from-a"\n')
    b = write(tmp_path / "b.toml", 'id = "from-b"\n')
    env = {k: v for k, v in REQUIRED.items() if k != "KIOSK_ID"} | {"KIOSK_CONFIG": str(b)}
    assert load(None, environ=env).settings.id == "from-b"
    assert load(None, environ=env).config_file == b
    assert load(a, environ=env).settings.id == "from-a"


def test_currencies_are_a_toml_list_or_a_comma_separated_variable(tmp_path: Path) -> None:
    config = write(tmp_path / "k.toml", 'currency = ["usd", "cad"]\n')
    assert load(config, environ=REQUIRED).settings.currency == ("usd", "cad")
    env = REQUIRED | {"KIOSK_CURRENCY": "eur, gbp"}
    assert load(None, environ=env).settings.currency == ("eur", "gbp")


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "unix_path"),
    [
        ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False, None),
        ("mqtt://broker.local", "broker.local", 1883, False, None),
        ("mqtts://broker.example.com:8884", "broker.example.com", 8884, True, None),
        ("unix:///run/mosquitto/mosquitto.sock", "", 1883, False, "/run/mosquitto/mosquitto.sock"),
    ],
)
def test_broker_urls_that_are_accepted(url: str, host: str, port: int, *, tls: bool, unix_path: str | None) -> None:
    mqtt = load(None, environ=REQUIRED | {"KIOSK_MQTT__URL": url}).settings.mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls, mqtt.unix_path) == (host, port, tls, unix_path)


# (environment on top of REQUIRED, the key the sentence must start with, what it must say)
INVALID_ENV: list[tuple[dict[str, str | None], str, str]] = [
    ({"KIOSK_STRIPE__READER_ID": "abc"}, "stripe.reader_id", "'abc' is not a reader id"),
    ({"KIOSK_STRIPE__API_KEY": None}, "stripe.api_key", "is required"),
    ({"KIOSK_STRIPE__API_KEY": "pk_test_51Publishable"}, "stripe.api_key", "not a Stripe secret"),
    ({"KIOSK_STRIPE__READER_ID": None}, "stripe.reader_id", "is required"),
    ({"KIOSK_ID": None}, "id", "is required"),
    ({"KIOSK_ID": "vm lobby/1"}, "id", "must be 1 to 64 characters"),
    ({"KIOSK_ID": "x" * 65}, "id", "must be 1 to 64 characters"),
    ({"KIOSK_CURRENCY": "USD"}, "currency", "'USD' is not a lower-case ISO 4217 code"),
    ({"KIOSK_CURRENCY": "usd,euro"}, "currency", "'euro' is not a lower-case ISO 4217 code"),
    ({"KIOSK_CURRENCY": ","}, "currency", "at least one currency"),
    ({"KIOSK_PAYMENTS__CARD_TIMEOUT_S": "-5"}, "payments.card_timeout_s", "above 0"),
    ({"KIOSK_PAYMENTS__REQUEST_TIMEOUT_S": "0"}, "payments.request_timeout_s", "above 0"),
    ({"KIOSK_PAYMENTS__VEND_RESULT_TIMEOUT_S": "9999"}, "payments.vend_result_timeout_s", "3600"),
    ({"KIOSK_PAYMENTS__CARD_TIMEOUT_S": "soon"}, "payments.card_timeout_s", "valid number"),
    ({"KIOSK_PAYMENTS__MAX_CARD_ATTEMPTS": "0"}, "payments.max_card_attempts", "1"),
    ({"KIOSK_PAYMENTS__FLOW": "tap"}, "payments.flow", "'process' or 'collect_confirm'"),
    ({"KIOSK_MAX_AMOUNT": "-1"}, "max_amount", "greater than or equal to 1"),
    ({"KIOSK_MQTT__URL": "127.0.0.1:1883"}, "mqtt.url", "must start with mqtt://"),
    ({"KIOSK_MQTT__URL": "broker.local"}, "mqtt.url", "must start with mqtt://"),
    ({"KIOSK_MQTT__URL": "http://broker.local"}, "mqtt.url", "must start with mqtt://"),
    ({"KIOSK_MQTT__URL": "mqtt://broker.local:99999"}, "mqtt.url", "port"),
    ({"KIOSK_MQTT__URL": "mqtt://broker.local:http"}, "mqtt.url", "port"),
    ({"KIOSK_MQTT__URL": "mqtt://broker.local:0"}, "mqtt.url", "port"),
    ({"KIOSK_MQTT__URL": "mqtt://broker.local:1883/vend"}, "mqtt.url", "only a scheme"),
    ({"KIOSK_MQTT__URL": "mqtt://broker.local?x=1"}, "mqtt.url", "only a scheme"),
    ({"KIOSK_MQTT__URL": "mqtt://:1883"}, "mqtt.url", "no host name"),
    ({"KIOSK_MQTT__URL": "mqtt://kiosk@broker.local"}, "mqtt.url", "set mqtt.username and mqtt.password"),
    ({"KIOSK_MQTT__URL": "unix://run/m.sock"}, "mqtt.url", "absolute path"),
    ({"KIOSK_MQTT__TOPIC_PREFIX": "vend/#"}, "mqtt.topic_prefix", "without wildcards"),
    ({"KIOSK_MQTT__KEEPALIVE_S": "1"}, "mqtt.keepalive_s", "greater than or equal to 5"),
    ({"KIOSK_STRIPE__API_BASE": "api.stripe.com"}, "stripe.api_base", "http(s) URL"),
    ({"KIOSK_STRIPE__API_VERSION": "latest"}, "stripe.api_version", "not a Stripe API version"),
    ({"KIOSK_FLEET__ENABLED": "maybe"}, "fleet.enabled", "valid boolean"),
    ({"KIOSK_FLEET__HEALTH_PERIOD_S": "5"}, "fleet.health_period_s", "10"),
    ({"KIOSK_JOURNAL__KEEP_DAYS": "1"}, "journal.keep_days", "'1' must be a whole number of days from 7 to 3650"),
    ({"KIOSK_JOURNAL__KEEP_DAYS": "5000"}, "journal.keep_days", "from 7 to 3650"),
    ({"KIOSK_JOURNAL__KEEP_DAYS": "90d"}, "journal.keep_days", "valid integer"),
    ({"KIOSK_MQTT__HOTS": "x"}, "mqtt.hots", "is not a setting kiosk knows"),
    ({"KIOSK_PAYMENT__CARD_TIMEOUT_S": "5"}, "payment", "is not a setting kiosk knows"),
]


@pytest.mark.parametrize(("change", "key", "says"), INVALID_ENV)
def test_each_invalid_value_is_one_sentence_naming_its_key(change: dict[str, str | None], key: str, says: str) -> None:
    env = {k: v for k, v in (REQUIRED | change).items() if v is not None}
    [problem] = problems(None, env)
    assert problem.startswith((f"{key}: ", f"{key} (from KIOSK_"))
    assert says in problem
    assert "\n" not in problem
    assert API_KEY not in problem


def test_journal_retention_is_180_days_unless_set() -> None:
    assert load(None, environ=REQUIRED).settings.journal.keep_days == 180
    env = REQUIRED | {"KIOSK_JOURNAL__KEEP_DAYS": "90"}
    assert load(None, environ=env).settings.journal.keep_days == 90


def test_a_too_short_retention_says_why() -> None:
    assert problems(None, REQUIRED | {"KIOSK_JOURNAL__KEEP_DAYS": "3"}) == [
        (
            "journal.keep_days (from KIOSK_JOURNAL__KEEP_DAYS): '3' must be a whole number of days from 7 to 3650;"
            " an order id is recognised as a duplicate only while its ended order is kept"
        )
    ]


def test_a_value_from_the_environment_names_its_variable() -> None:
    [problem] = problems(None, REQUIRED | {"KIOSK_STRIPE__READER_ID": "abc"})
    assert problem == "stripe.reader_id (from KIOSK_STRIPE__READER_ID): 'abc' is not a reader id; it looks like tmr_…"


def test_a_missing_value_says_how_to_set_it() -> None:
    env = {k: v for k, v in REQUIRED.items() if k != "KIOSK_STRIPE__API_KEY"}
    assert problems(None, env) == [
        "stripe.api_key: is required; set it with KIOSK_STRIPE__API_KEY or the stripe_api_key credential"
    ]


def test_a_misspelt_key_gets_a_suggestion(tmp_path: Path) -> None:
    config = write(tmp_path / "k.toml", "[payments]\ncard_timeout = 20\n")
    assert problems(config, REQUIRED) == [
        (
            "payments.card_timeout (in the config file): is not a setting kiosk knows; "
            "did you mean payments.card_timeout_s?"
        ),
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = write(
        tmp_path / "k.toml",
        '[mqtt]\nurl = "localhost"\n[payments]\ncard_timeout_s = -1\n[stripe]\nreader_id = "abc"\n',
    )
    found = problems(config, {"KIOSK_ID": "vm-1"})
    assert sorted(p.split(" ")[0].rstrip(":") for p in found) == [
        "mqtt.url",
        "payments.card_timeout_s",
        "stripe.api_key",
        "stripe.reader_id",
    ]


@pytest.mark.parametrize(
    ("toml", "key", "says"),
    [
        ('[stripe]\nreader_id = "abc"\n', "stripe.reader_id", "is not a reader id"),
        ("[payments]\ncard_timeout_s = -1.5\n", "payments.card_timeout_s", "above 0"),
        ("[payments]\nmax_card_attempts = 2.5\n", "payments.max_card_attempts", "integer"),
        ('[mqtt]\nurl = "tcp://127.0.0.1:1883"\n', "mqtt.url", "must start with mqtt://"),
        ('id = "kiosk #7"\n', "id", "must be 1 to 64 characters"),
        ('currency = ["usd", "EUR"]\n', "currency", "'EUR' is not a lower-case ISO 4217 code"),
        ("max_amount = 2.5\n", "max_amount", "integer"),
        ("max_amount = 1e9\n", "max_amount", "less than or equal to 99999999"),
        ('[fleet]\nenabled = "yes please"\n', "fleet.enabled", "boolean"),
        ("[journal]\nkeep_days = 90.5\n", "journal.keep_days", "integer"),
        ("[journal]\nkeep_days = 0\n", "journal.keep_days", "from 7 to 3650"),
        ('mqtt = "mqtt://127.0.0.1"\n', "mqtt", "has the wrong type"),
        ("debug = true\n", "debug", "is not a setting kiosk knows"),
        ("[stripe]\napi_secret = 1\n", "stripe.api_secret", "is not a setting kiosk knows"),
    ],
)
def test_invalid_values_in_the_file(tmp_path: Path, toml: str, key: str, says: str) -> None:
    # Whatever the file sets must not also come from the environment (which would win).
    in_file = settings._flatten(tomllib.loads(toml)).keys()
    shadowing = {settings.env_name(k) for k in in_file}
    env = {k: v for k, v in REQUIRED.items() if k not in shadowing}
    [problem] = problems(write(tmp_path / "k.toml", toml), env)
    assert problem.startswith(f"{key} (in the config file): ")
    assert says in problem


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert problems(missing, REQUIRED) == [f"config file {missing} does not exist; pass an existing file with --config"]


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, REQUIRED)
    assert problem.startswith(f"config file {tmp_path} is a directory")


def test_bad_toml_names_the_line_but_never_quotes_it(tmp_path: Path) -> None:
    config = write(tmp_path / "k.toml", f'id = "vm-1"\n[stripe]\napi_key = {API_KEY}\n')
    [problem] = problems(config, REQUIRED)
    assert problem.startswith(f"config file {config} is not valid TOML (")
    assert "line 3" in problem
    assert API_KEY not in problem


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    config = tmp_path / "k.toml"
    config.write_bytes(b'id = "caf\xe9"\n')
    [problem] = problems(config, REQUIRED)
    assert "is not UTF-8 text" in problem or "is not valid TOML" in problem


@pytest.mark.parametrize(
    "change",
    [
        # A secret pasted into the wrong setting.
        {"KIOSK_STRIPE__READER_ID": API_KEY},
        {"KIOSK_MQTT__URL": API_KEY},
        {"KIOSK_ID": f"{API_KEY}!"},
        # The configured password, anywhere it does not belong.
        {"KIOSK_MQTT__PASSWORD": PASSWORD, "KIOSK_MQTT__URL": f"mqtt://kiosk:{PASSWORD}@broker:1883"},
        {"KIOSK_MQTT__PASSWORD": PASSWORD, "KIOSK_STRIPE__READER_ID": PASSWORD},
        # A malformed secret is still a secret.
        {"KIOSK_STRIPE__API_KEY": "sk_live_short"},
        {"KIOSK_STRIPE__API_KEY": PASSWORD},
        # A login in the broker URL, password not configured anywhere else.
        {"KIOSK_MQTT__URL": f"mqtt://kiosk:{PASSWORD}@broker:1883"},
    ],
)
def test_errors_never_contain_a_secret_value(change: dict[str, str]) -> None:
    env = REQUIRED | change
    text = "\n".join(problems(None, env))
    for secret in (API_KEY, PASSWORD, "sk_live_short"):
        assert secret not in text


def test_a_wrong_type_for_a_secret_section_does_not_echo_it(tmp_path: Path) -> None:
    config = write(tmp_path / "k.toml", f'id = "vm-1"\nstripe = "{API_KEY}"\n')
    [problem] = problems(config, {})
    assert problem.startswith("stripe (in the config file): ")
    assert API_KEY not in problem


def test_an_unreadable_credential_is_named(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "stripe_api_key").mkdir()  # unreadable as a file, even for root
    [problem] = problems(None, REQUIRED | {"CREDENTIALS_DIRECTORY": str(creds)})
    assert problem.startswith(f"credential {creds / 'stripe_api_key'} cannot be read")


def test_effective_settings_mask_secrets_and_say_where_each_came_from(tmp_path: Path) -> None:
    config = write(tmp_path / "k.toml", "max_amount = 2500\n")
    env = REQUIRED | {"KIOSK_MQTT__PASSWORD": PASSWORD}
    rows = {key: (value, source) for key, value, source in settings.effective(load(config, environ=env))}
    assert rows["stripe.api_key"] == ("sk_test_********", "env")
    assert rows["mqtt.password"] == ("********", "env")
    assert rows["max_amount"] == ("2500", "file")
    assert rows["fleet.enabled"] == ("true", "default")
    assert rows["mqtt.username"] == ("(not set)", "default")
    assert rows["currency"] == ("usd", "default")
    shown = repr(rows)
    assert API_KEY not in shown
    assert PASSWORD not in shown


# --- the example configuration (config/kiosk.toml) ---------------------------------------------

# `# key = value` lines in the example: the documented default (or an example value).
SETTING_LINE = re.compile(r"^# ([a-z_]+ = .+)$")
SECTION_LINE = re.compile(r"^\[([a-z]+)\]$")
# Settings without a default: the example shows a value of the right shape instead.
NO_DEFAULT = {
    "id",
    "stripe.reader_id",
    "stripe.api_version",
    "mqtt.username",
    "mqtt.ca_file",
    "mqtt.cert_file",
    "mqtt.key_file",
    "fleet.signing_public_key",
}


def uncommented_example() -> str:
    """The example with every `# key = value` line turned into a setting."""
    lines = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = SETTING_LINE.match(line)
        lines.append(match.group(1) if match else line)
    return "\n".join(lines) + "\n"


def example_keys() -> dict[str, Any]:
    return settings._flatten(tomllib.loads(uncommented_example()))


def test_the_example_sets_nothing_and_holds_no_secret() -> None:
    assert tomllib.loads(EXAMPLE.read_text(encoding="utf-8")) == {
        "mqtt": {},
        "stripe": {},
        "payments": {},
        "fleet": {},
        "journal": {},
    }
    keys = example_keys()
    assert not settings.SECRET_KEYS & keys.keys()
    assert "KIOSK_STRIPE__API_KEY" in EXAMPLE.read_text(encoding="utf-8")
    assert "stripe_api_key" in EXAMPLE.read_text(encoding="utf-8")


def test_the_example_documents_every_setting_but_the_secrets() -> None:
    loaded = load(None, environ=REQUIRED)
    every = {key for key, _, _ in settings.effective(loaded)}
    assert example_keys().keys() == every - settings.SECRET_KEYS


def test_the_defaults_in_the_example_are_the_real_defaults(tmp_path: Path) -> None:
    defaults = settings._flatten(load(None, environ=REQUIRED).settings.model_dump())
    for key, value in example_keys().items():
        if key in NO_DEFAULT:
            continue
        real = defaults[key]
        shown = list(real) if isinstance(real, tuple) else str(real) if isinstance(real, Path) else real
        assert shown == value, key
    # And the example values of the rest are valid: uncommented, it loads.
    config = write(tmp_path / "kiosk.toml", uncommented_example())
    env = {"KIOSK_STRIPE__API_KEY": API_KEY}
    loaded = load(config, environ=env)
    assert loaded.settings.stripe.reader_id.startswith("tmr_")
    assert {s for k, s in loaded.sources.items() if k not in settings.SECRET_KEYS} == {"file"}


def test_the_example_as_shipped_loads_with_the_required_values_from_the_environment() -> None:
    loaded = load(EXAMPLE, environ=REQUIRED)
    assert loaded.config_file == EXAMPLE
    assert loaded.settings.id == "vm-lobby-1"


def test_secrets_never_print_from_the_settings_object() -> None:
    loaded = load(None, environ=REQUIRED | {"KIOSK_MQTT__PASSWORD": PASSWORD})
    for text in (repr(loaded), str(loaded.settings), loaded.settings.model_dump_json(), f"{loaded.settings.stripe}"):
        assert API_KEY not in text
        assert PASSWORD not in text
    assert loaded.settings.secret_values() == [API_KEY, PASSWORD]
