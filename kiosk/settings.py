"""Configuration: a TOML file, then `KIOSK_` environment variables, then credential files.

Later sources win. Every value remembers where it came from, so `kiosk check-config` can say so,
and every invalid value is reported as one sentence that names the key and how to fix it.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from kiosk.errors import ConfigError

ENV_PREFIX = "KIOSK_"
DEFAULT_CONFIG_FILE = Path("/etc/kiosk/kiosk.toml")

# Credential files (systemd `LoadCredential=`) that kiosk reads from $CREDENTIALS_DIRECTORY, and
# the setting each fills. Only secrets are read this way.
CREDENTIAL_FILES: Mapping[str, tuple[str, str]] = {
    "stripe_api_key": ("stripe", "api_key"),
    "mqtt_password": ("mqtt", "password"),
}

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
READER_ID_PATTERN = re.compile(r"tmr_[A-Za-z0-9]{1,64}")
API_KEY_PATTERN = re.compile(r"(sk|rk)_(test|live)_[A-Za-z0-9]{8,247}")
CURRENCY_PATTERN = re.compile(r"[a-z]{3}")
# journal.keep_days: a week at least (a controller re-sends a request within minutes, and its
# retained status expires after a day), ten years at most.
KEEP_DAYS_MIN = 7
KEEP_DAYS_MAX = 3650

Source = Literal["default", "file", "env", "credential"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _positive_seconds(value: float, upper: float) -> float:
    if not 0 < value <= upper:
        raise ValueError(f"must be a number of seconds above 0 and at most {upper:g}")
    return value


class MqttSettings(_Section):
    """The broker connection (local Mosquitto, or a cloud broker over TLS)."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    topic_prefix: str = "vend/v1"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "unix":
            if parts.netloc or not parts.path.startswith("/"):
                raise ValueError("a unix socket URL needs an absolute path, like unix:///run/mosquitto/mosquitto.sock")
            return value
        if parts.scheme not in {"mqtt", "mqtts"}:
            raise ValueError("must start with mqtt://, mqtts:// or unix://, like mqtt://127.0.0.1:1883")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535") from None
        if parts.username is not None or parts.password is not None:
            # It would be printed by check-config and logged; the password is a secret.
            raise ValueError("must not carry a login; set mqtt.username and mqtt.password instead")
        if not parts.hostname:
            raise ValueError("has no host name, like mqtt://127.0.0.1:1883")
        if port == 0:
            raise ValueError("has a port that is not a number from 1 to 65535")
        if parts.path not in {"", "/"} or parts.query or parts.fragment:
            raise ValueError("must be only a scheme, a host and a port, like mqtt://127.0.0.1:1883")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or value.endswith("/") or any(c in value for c in "#+\0"):
            raise ValueError("must be topic levels without wildcards or a leading or trailing /, like vend/v1")
        return value

    @property
    def host(self) -> str:
        """Host name for mqtt:// and mqtts://."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """Port, with MQTT's defaults (1883 plain, 8883 TLS)."""
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS."""
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def unix_path(self) -> str | None:
        """Socket path of a unix:// URL, else None."""
        parts = urlsplit(self.url)
        return parts.path if parts.scheme == "unix" else None


class StripeSettings(_Section):
    """The Stripe account and the reader this kiosk drives."""

    api_key: SecretStr
    api_base: str = "https://api.stripe.com"
    api_version: str | None = None
    reader_id: str

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not API_KEY_PATTERN.fullmatch(value.get_secret_value()):
            raise ValueError(
                "is not a Stripe secret or restricted key; it looks like sk_live_…, sk_test_…,"
                " rk_live_… or rk_test_… (a publishable pk_ key cannot take payments)"
            )
        return value

    @field_validator("api_base")
    @classmethod
    def _check_base(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http(s) URL, like https://api.stripe.com")
        return value.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _check_version(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}(\.[a-z]+)?", value):
            raise ValueError("is not a Stripe API version; it looks like 2026-09-30.endive or 2023-08-16")
        return value

    @field_validator("reader_id")
    @classmethod
    def _check_reader(cls, value: str) -> str:
        if not READER_ID_PATTERN.fullmatch(value):
            raise ValueError("is not a reader id; it looks like tmr_…")
        return value


class PaymentSettings(_Section):
    """How long each step of a payment may take, and how it is taken."""

    card_timeout_s: float = 30
    max_card_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    vend_result_timeout_s: float = 300
    request_timeout_s: float = 30
    flow: Literal["process", "collect_confirm"] = "process"
    # Card rules of the collect_confirm flow (empty: any); the card is read, checked, then
    # confirmed or released. Brands and funding as Stripe names them (visa, credit, ...).
    allowed_brands: tuple[str, ...] = ()
    allowed_funding: tuple[str, ...] = ()
    allow_wallets: bool = True
    reader_check_s: float = 60
    reconcile_every_s: float = 300
    # How often the reader is read while a card is expected: the trade-off between Stripe
    # requests per order (a fleet shares one account's rate limit) and how soon an approval is
    # seen (bench/RESULTS.md measures both sides).
    poll_interval_s: float = 2.0

    @field_validator("allowed_brands", "allowed_funding", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_brands", "allowed_funding")
    @classmethod
    def _check_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"[a-z_]{1,32}", name):
                raise ValueError(f"{name!r} is not a card brand or funding name, like visa or credit")
        return value

    @field_validator("card_timeout_s", "request_timeout_s")
    @classmethod
    def _check_short(cls, value: float) -> float:
        return _positive_seconds(value, 600)

    @field_validator("vend_result_timeout_s")
    @classmethod
    def _check_vend(cls, value: float) -> float:
        return _positive_seconds(value, 3600)

    @field_validator("reader_check_s")
    @classmethod
    def _check_reader_check(cls, value: float) -> float:
        return _positive_seconds(value, 3600)

    @field_validator("poll_interval_s")
    @classmethod
    def _check_poll(cls, value: float) -> float:
        return _positive_seconds(value, 10)

    @field_validator("reconcile_every_s")
    @classmethod
    def _check_reconcile(cls, value: float) -> float:
        return _positive_seconds(value, 3600)


class FleetSettings(_Section):
    """Fleet management topics on the same broker connection."""

    enabled: bool = True
    topic_prefix: str = "fleet/v1"
    health_period_s: Annotated[int, Field(ge=10, le=3600)] = 60
    signing_public_key: str | None = None
    releases_dir: Path = Path("/opt/kiosk/releases")
    # Software updates (kiosk/fleet/updates.py). Where a new release's dependencies come from:
    # `index` — pip's configured index (PyPI, piwheels); `inherit` — the running release's
    # installed packages, so nothing but the wheel is downloaded (offline sites, tests).
    update_dependencies: Literal["index", "inherit"] = "index"
    # A new release must reach READY and connect to the broker within this after its first
    # start, or kiosk switches back to the release it came from.
    update_commit_deadline_s: Annotated[float, Field(gt=0, le=3600)] = 180


class JournalSettings(_Section):
    """How long the journal (in state_dir) keeps orders that ended."""

    # Completed, canceled and failed orders, with their history, are deleted this many days after
    # they ended: long enough to answer a dispute (card networks allow 120 days) and to recognise a
    # controller's late duplicate request by its order id. Open orders are never deleted.
    keep_days: int = 180

    @field_validator("keep_days")
    @classmethod
    def _check_keep_days(cls, value: int) -> int:
        if not KEEP_DAYS_MIN <= value <= KEEP_DAYS_MAX:
            raise ValueError(
                f"must be a whole number of days from {KEEP_DAYS_MIN} to {KEEP_DAYS_MAX}; an order id"
                " is recognised as a duplicate only while its ended order is kept"
            )
        return value


def _default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    # systemd's StateDirectory= may list several directories, separated by colons: ours is first.
    return Path((env.get("STATE_DIRECTORY") or "/var/lib/kiosk").split(":")[0])


class Settings(BaseSettings):
    """Everything kiosk can be told. Built by `load`, which layers the sources."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    id: str
    state_dir: Path = Field(default_factory=_default_state_dir)
    currency: tuple[str, ...] = ("usd",)
    max_amount: Annotated[int, Field(ge=1, le=99_999_999)] = 10_000
    mqtt: MqttSettings = MqttSettings()
    stripe: StripeSettings
    payments: PaymentSettings = PaymentSettings()
    fleet: FleetSettings = FleetSettings()
    journal: JournalSettings = JournalSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - `load` layers env itself
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what `load` merged: it tracks each value's source for check-config."""
        del settings_cls
        return (init_settings,)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not ID_PATTERN.fullmatch(value):
            raise ValueError("must be 1 to 64 characters of letters, digits, '.', '_' or '-', like vm-lobby-1")
        return value

    @field_validator("currency", mode="before")
    @classmethod
    def _split_currency(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("currency")
    @classmethod
    def _check_currency(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one currency, like usd")
        for code in value:
            if not CURRENCY_PATTERN.fullmatch(code):
                raise ValueError(f"{code!r} is not a lower-case ISO 4217 code, like usd or eur")
        return value

    def secret_values(self) -> list[str]:
        """The configured secrets, for the log redactor."""
        secrets = [self.stripe.api_key.get_secret_value()]
        if self.mqtt.password is not None:
            secrets.append(self.mqtt.password.get_secret_value())
        return [s for s in secrets if s]


@dataclass(frozen=True, slots=True)
class Loaded:
    """Settings plus where each leaf value came from (dotted key → source)."""

    settings: Settings
    sources: dict[str, Source]
    config_file: Path | None


SECRET_KEYS = frozenset({"stripe.api_key", "mqtt.password"})


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError([f"{dotted}: {part} is a value, not a section"])
        tree = node
    tree[leaf] = value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problem = f"config file {path} does not exist; pass an existing file with --config"
    except PermissionError:
        problem = f"config file {path} cannot be read; give the kiosk user read access"
    except IsADirectoryError:
        problem = f"config file {path} is a directory; pass the TOML file itself with --config"
    except OSError as exc:
        problem = f"config file {path} cannot be read ({exc.strerror}); check the file"
    except UnicodeDecodeError:
        problem = f"config file {path} is not UTF-8 text; save it as UTF-8 TOML"
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names the line and column, never the text there.
        problem = f"config file {path} is not valid TOML ({exc}); fix the syntax there"
    raise ConfigError([problem])


def _read_env(environ: Mapping[str, str]) -> dict[str, str]:
    flat: dict[str, str] = {}
    for name, value in environ.items():
        # KIOSK_TEST_* are the crash tests' hooks (kiosk/crashpoints.py), not settings.
        if not name.startswith(ENV_PREFIX) or name == "KIOSK_CONFIG" or name.startswith("KIOSK_TEST_"):
            continue
        flat[name.removeprefix(ENV_PREFIX).lower().replace("__", ".")] = value
    return flat


def _read_credentials(directory: Path) -> dict[str, str]:
    flat: dict[str, str] = {}
    for filename, (section, key) in CREDENTIAL_FILES.items():
        path = directory / filename
        try:
            flat[f"{section}.{key}"] = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError([f"credential {path} cannot be read ({exc.strerror}); check LoadCredential="]) from None
    return flat


def resolve_config_path(
    explicit: str | Path | None,
    environ: Mapping[str, str],
    default: Path | None = DEFAULT_CONFIG_FILE,
) -> Path | None:
    """`--config`, else `$KIOSK_CONFIG`, else `default` (/etc/kiosk/kiosk.toml) when present."""
    if explicit is not None:
        return Path(explicit)
    if environ.get("KIOSK_CONFIG"):
        return Path(environ["KIOSK_CONFIG"])
    return default if default is not None and default.is_file() else None


def env_name(dotted: str) -> str:
    """The environment variable that sets a dotted key (`mqtt.url` → `KIOSK_MQTT__URL`)."""
    return ENV_PREFIX + dotted.upper().replace(".", "__")


_MISSING_HINT = {
    "id": "set id in the config file or KIOSK_ID, like vm-lobby-1",
    "stripe.api_key": "set it with KIOSK_STRIPE__API_KEY or the stripe_api_key credential",
    "stripe.reader_id": ("set it to your reader's id (tmr_…) in the config file or KIOSK_STRIPE__READER_ID"),
}


def _origin(key: str, sources: Mapping[str, Source]) -> str:
    """Where a key's value came from, for the error sentence ("" for defaults)."""
    origin = sources.get(key)
    if origin is None:
        # An unknown section: the values under it tell where it came from.
        below = [v for k, v in sources.items() if k.startswith(f"{key}.")]
        origin = below[0] if below else None
    if origin == "file":
        return " (in the config file)"
    if origin == "env":
        below_keys = [k for k in sources if k == key or k.startswith(f"{key}.")]
        return f" (from {env_name(below_keys[0] if below_keys else key)})"
    if origin == "credential":
        return " (from a credential file)"
    return ""


def _known_keys() -> list[str]:
    keys: list[str] = []
    for name, field in Settings.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            keys += [f"{name}.{sub}" for sub in model.model_fields]
        else:
            keys.append(name)
    return keys


def _describe(error: Mapping[str, Any], sources: Mapping[str, Source], scrub: Callable[[str], str]) -> str:
    """One sentence for one pydantic error: the key, where it came from, what is wrong, the fix."""
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    where = _origin(key, sources)
    if kind == "missing":
        return f"{key}: is required; {_MISSING_HINT.get(key, f'set {key}')}"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(key, _known_keys(), n=1)
        hint = f"did you mean {close[0]}?" if close else "see config/kiosk.toml for every setting"
        return f"{key}{where}: is not a setting kiosk knows; {hint}"
    # The offending value helps the operator, unless it is (or might be) a secret.
    shown = "" if key in SECRET_KEYS else f"{scrub(repr(error.get('input')))} "
    if key == "mqtt.url":
        shown = _URL_PASSWORD.sub(r"//\1:********@", shown)
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind in {"greater_than_equal", "less_than_equal", "literal_error"} or kind.endswith("_parsing"):
        message = f"is not allowed: {message[0].lower()}{message[1:]}"
    elif kind.endswith("_type") or kind == "int_from_float":
        message = f"has the wrong type: {message[0].lower()}{message[1:]}"
    elif kind != "value_error":
        message = message[0].lower() + message[1:]
    elif key == "currency":
        shown = ""  # the validator names the offending code itself
    return f"{key}{where}: {shown}{message}"


# The password of a login written into a URL (mqtt://user:password@host).
_URL_PASSWORD = re.compile(r"//([^/@:]*):[^/@]*@")


def _secret_scrubber(merged: Mapping[str, Any]) -> Callable[[str], str]:
    """Removes Stripe-looking keys and every configured secret value from a message."""
    from kiosk.logs import Redactor  # noqa: PLC0415 - logs imports nothing from here; keep it so

    flat = _flatten(merged)
    return Redactor(str(flat[k]) for k in SECRET_KEYS if flat.get(k)).scrub


def load(
    config: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    default_file: Path | None = DEFAULT_CONFIG_FILE,
    fallbacks: Mapping[str, Any] | None = None,
) -> Loaded:
    """Read every source, validate, and return the effective settings.

    `default_file` is read when neither `config` nor $KIOSK_CONFIG names one; tests pass None so
    that a machine's own /etc/kiosk/kiosk.toml cannot change their outcome. `fallbacks` (dotted
    key → value) fill required settings no source gives, for commands that do not need them
    (`kiosk reader register` runs before the reader id is known).

    Raises:
        ConfigError: with one sentence per invalid or missing setting.
    """
    env = os.environ if environ is None else environ
    path = resolve_config_path(config, env, default_file)
    layers: list[tuple[Source, dict[str, Any]]] = []
    if path is not None:
        layers.append(("file", _flatten(_read_file(path))))
    layers.append(("env", _read_env(env)))
    if env.get("CREDENTIALS_DIRECTORY"):
        layers.append(("credential", _read_credentials(Path(env["CREDENTIALS_DIRECTORY"]))))

    # Sections with required keys exist, so a missing one is reported key by key.
    merged: dict[str, Any] = {"stripe": {}}
    sources: dict[str, Source] = {}
    for source, flat in layers:
        for dotted, value in flat.items():
            _set(merged, dotted, value)
            sources[dotted] = source
    for dotted, value in (fallbacks or {}).items():
        if dotted not in sources:
            _set(merged, dotted, value)
    if "state_dir" not in merged:
        merged["state_dir"] = _default_state_dir(env)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        scrub = _secret_scrubber(merged)
        # `from None`: pydantic's error repeats the input values, secrets included.
        raise ConfigError([_describe(e, sources, scrub) for e in exc.errors()]) from None
    for dotted in _flatten(settings.model_dump()):
        sources.setdefault(dotted, "default")
    return Loaded(settings=settings, sources=sources, config_file=path)


def effective(loaded: Loaded) -> list[tuple[str, str, Source]]:
    """(key, printable value, source) rows, secrets masked."""
    rows: list[tuple[str, str, Source]] = []
    for dotted, value in _flatten(loaded.settings.model_dump()).items():
        if dotted in SECRET_KEYS:
            shown = "(not set)" if value is None else _mask(value)
        elif value is None:
            shown = "(not set)"
        elif isinstance(value, bool):
            shown = "true" if value else "false"  # as TOML and the environment spell it
        elif isinstance(value, float):
            shown = f"{value:g}"  # 30, not 30.0; as the operator wrote it
        elif isinstance(value, tuple | list):
            shown = ", ".join(str(v) for v in value)
        else:
            shown = str(value)
        rows.append((dotted, shown, loaded.sources.get(dotted, "default")))
    return rows


def _mask(value: SecretStr) -> str:
    secret = value.get_secret_value()
    match = API_KEY_PATTERN.fullmatch(secret)
    if match:
        return f"{match.group(1)}_{match.group(2)}_********"
    return "********"
