"""Signing secrets and Standard Webhooks signatures.

Secrets are ``whsec_`` + base64 of 32 random bytes, generated unless the subscriber gives
one; they are shown once and stored sealed with Fernet under a key derived from the
installation's secret (they must be recoverable to sign). Signatures are the Standard
Webhooks reference implementation's (``standardwebhooks``), so receivers verify with the
same library: ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``,
one per live secret, space-separated while a rotated-out secret still signs.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from standardwebhooks import Webhook as StandardWebhook

if TYPE_CHECKING:
    from maestro.config import Settings

PREFIX = "whsec_"
_PURPOSE = b"maestro webhook secrets v1"


class SecretUnreadable(Exception):
    """A sealed secret cannot be opened: the installation's secret key changed since."""


def generate_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: the decoded bytes of a ``whsec_`` secret, the UTF-8
    bytes of any other (as ``StandardWebhook(secret.encode())`` verifies them)."""
    if secret.startswith(PREFIX):
        return base64.b64decode(secret[len(PREFIX) :] + "==", validate=False)
    return secret.encode("utf-8")


def valid_whsec(secret: str) -> bool:
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return False
    return 24 <= len(key) <= 64


@lru_cache(maxsize=4)
def _fernet(installation_secret: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(
        installation_secret.encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(key))


def seal(settings: Settings, secret: str) -> str:
    return _fernet(settings.signing_key).encrypt(secret.encode("utf-8")).decode("ascii")


def unseal(settings: Settings, sealed: str) -> str:
    try:
        return _fernet(settings.signing_key).decrypt(sealed.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError):
        raise SecretUnreadable("the installation's secret key changed since the secret was stored") from None


def signature(secret: str, message_id: str, timestamp: datetime, body: bytes) -> str:
    return StandardWebhook(secret_key(secret)).sign(message_id, timestamp, body)


def headers(message_id: str, timestamp: datetime, body: bytes, secrets_: Iterable[str]) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed with every live secret."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(signature(secret, message_id, timestamp, body) for secret in secrets_),
    }
