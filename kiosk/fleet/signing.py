"""Ed25519 signatures over canonical JSON, for desired configuration, commands and jobs.

The signed bytes are the payload without its `sig` field, serialised with sorted keys, no
whitespace and UTF-8 (`canonical`); `sig` is the signature in standard base64. The public key in
`fleet.signing_public_key` is the raw 32-byte Ed25519 key in base64; the operator keeps the
private key as PKCS#8 PEM (`kiosk fleet keygen`).

`cryptography` (about 10 MB resident) is imported by the first function that needs a key, not
with this module: a kiosk with no signing key configured never loads it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from kiosk.errors import ConfigError, KioskError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SigningError(KioskError):
    """A key cannot be read or a payload cannot be signed."""


def canonical(payload: dict[str, Any]) -> bytes:
    """The bytes that are signed: the payload without `sig`, sorted keys, no spaces, UTF-8."""
    body = {k: v for k, v in payload.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class VerifyKey:
    """The fleet's public key as its 32 raw bytes; cryptography's key is made at the first verify."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != PUBLIC_KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, not {len(raw)}")
        self.raw = raw
        self._key: Ed25519PublicKey | None = None

    def key(self) -> Ed25519PublicKey:
        """The key object of the cryptography package (imported the first time)."""
        if self._key is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

            self._key = Ed25519PublicKey.from_public_bytes(self.raw)
        return self._key


PUBLIC_KEY_BYTES = 32


def public_key(text: str) -> VerifyKey:
    """The Ed25519 public key from its base64 form (checked here, loaded at the first verify).

    Raises:
        ConfigError: not base64 of 32 bytes.
    """
    try:
        return VerifyKey(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError):
        raise ConfigError(
            [
                (
                    "fleet.signing_public_key: is not an Ed25519 public key in base64 (32 bytes);"
                    " `kiosk fleet keygen` prints one"
                )
            ]
        ) from None


def public_key_text(key: Ed25519PublicKey) -> str:
    """The base64 form `fleet.signing_public_key` takes."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see above

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def verify(payload: dict[str, Any], key: VerifyKey | Ed25519PublicKey) -> bool:
    """Whether `payload["sig"]` is a valid signature of the rest of the payload."""
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - see above

    sig = payload.get("sig")
    if not isinstance(sig, str):
        return False
    if isinstance(key, VerifyKey):
        key = key.key()
    try:
        key.verify(base64.b64decode(sig, validate=True), canonical(payload))
    except (binascii.Error, ValueError, InvalidSignature, TypeError):
        return False
    return True


def sign(payload: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The payload with `sig` set (any old `sig` is replaced)."""
    try:
        body = canonical(payload)
    except (TypeError, ValueError) as exc:
        raise SigningError(f"the payload cannot be signed: {exc}") from exc
    return {**{k: v for k, v in payload.items() if k != "sig"}, "sig": base64.b64encode(key.sign(body)).decode()}


def generate() -> Ed25519PrivateKey:
    """A new private key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415 - see above

    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (keep the file private)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see above

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private(pem: bytes) -> Ed25519PrivateKey:
    """A private key from PKCS#8 PEM.

    Raises:
        SigningError: not an unencrypted Ed25519 private key.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see above
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError("the key is not an Ed25519 key; make one with `kiosk fleet keygen`")
    return key
