"""Deployment environment variables as write-only secrets.

Environment variables are where deployments keep passwords and API keys, and deployments
are read by everyone who may read their project (every signed-in user, for a public
project). So the values are sealed with Fernet (AES-128-CBC with HMAC-SHA256) under a key
derived from the installation's secret, and every read shows only the names, each with
``MASK`` for its value. The database holds the sealed values in
``deployments.env_vars_encrypted`` and the masked copy in ``deployment_config``.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import TYPE_CHECKING

import orjson
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from maestro.config import Settings

MASK = "********"
_PURPOSE = b"maestro deployment env_vars v1"


class SecretsUnreadable(Exception):
    """The sealed values cannot be opened: the installation's secret changed since."""


def installation_secret(settings: Settings) -> str:
    """The installation's secret the sealing key is derived from (the one that signs
    access tokens): the one place that says where it comes from."""
    return settings.signing_key


@lru_cache(maxsize=4)
def _fernet(secret: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(secret.encode("utf-8"))
    return Fernet(base64.urlsafe_b64encode(key))


def seal(settings: Settings, values: dict[str, str]) -> str | None:
    """The values, sealed; None when there are none."""
    if not values:
        return None
    return _fernet(installation_secret(settings)).encrypt(orjson.dumps(values)).decode("ascii")


def unseal(settings: Settings, sealed: str | None) -> dict[str, str]:
    """The values ``seal`` sealed."""
    if not sealed:
        return {}
    try:
        return orjson.loads(_fernet(installation_secret(settings)).decrypt(sealed.encode("ascii")))
    except (InvalidToken, ValueError):
        raise SecretsUnreadable("the installation's secret key changed since they were stored") from None


def masked(values: dict[str, str]) -> dict[str, str]:
    """What every read shows: the names, never the values."""
    return dict.fromkeys(values, MASK)
