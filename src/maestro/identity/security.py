"""Secrets and tokens: password hashing, access tokens, refresh tokens, API keys.

Access tokens are short-lived JWTs with a pinned algorithm and required claims.
Refresh tokens, invitation tokens and API keys are opaque random strings stored
only as SHA-256 hashes. API keys carry a checksum so a mistyped key is rejected
before any database lookup.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import zlib
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from maestro.config import Settings
from maestro.db import new_id, utcnow

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "maestro"
ACCESS_TOKEN_TYPE = "access"  # noqa: S105 - a claim value, not a secret

API_KEY_PREFIX = "mk_"
REFRESH_TOKEN_PREFIX = "mr_"  # noqa: S105 - a format marker, not a secret
_BASE62 = string.digits + string.ascii_letters
_API_KEY_RANDOM_LENGTH = 32
_CHECKSUM_LENGTH = 6
_REFRESH_TOKEN_BYTES = 32
_REFRESH_TOKEN_FORMAT = re.compile(r"mr_[A-Za-z0-9_-]{43}")  # 32 random bytes, URL-safe base64


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- passwords ---------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _hasher(time_cost: int, memory_kib: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)


def password_hasher(settings: Settings) -> PasswordHasher:
    return _hasher(settings.password_hash_time_cost, settings.password_hash_memory_kib)


def hash_password(settings: Settings, password: str) -> str:
    return password_hasher(settings).hash(password)


def verify_password(settings: Settings, password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the user exists, so timing reveals nothing."""
    hasher = password_hasher(settings)
    if not password_hash:
        hasher.hash(password)
        return False
    try:
        return hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(settings: Settings, password_hash: str) -> bool:
    return password_hasher(settings).check_needs_rehash(password_hash)


# --- access tokens -----------------------------------------------------------------------
def issue_access_token(
    settings: Settings, *, user_id: str, session_id: str, organization_id: str | None
) -> str:
    now = utcnow()
    claims = {
        "iss": JWT_ISSUER,
        "sub": user_id,
        "sid": session_id,
        "org": organization_id,
        "typ": ACCESS_TOKEN_TYPE,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=settings.access_token_ttl_seconds),
        "jti": new_id("jti"),
    }
    import jwt  # with cryptography: loaded at the first token, not at start

    return jwt.encode(claims, settings.signing_key, algorithm=JWT_ALGORITHM, headers={"typ": "JWT"})


class InvalidToken(Exception):
    pass


class ExpiredToken(InvalidToken):
    """Signed by this server and well formed, but past its expiry."""


def decode_access_token(settings: Settings, token: str) -> dict[str, Any]:
    """Validate signature, algorithm (pinned: ``alg: none`` and any other algorithm
    are refused), expiry, issuer, type and the presence of every claim we rely on."""
    import jwt  # with cryptography: loaded at the first token, not at start

    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != JWT_ALGORITHM or {"jku", "jwk", "x5u", "x5c"} & set(header):
            raise InvalidToken("unexpected token header")
        claims = jwt.decode(
            token,
            settings.signing_key,
            algorithms=[JWT_ALGORITHM],
            issuer=JWT_ISSUER,
            options={"require": ["exp", "iat", "sub", "jti", "sid", "typ", "iss"]},
            leeway=5,
        )
    except jwt.ExpiredSignatureError as exc:
        raise ExpiredToken(str(exc)) from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    if claims.get("typ") != ACCESS_TOKEN_TYPE:
        raise InvalidToken("not an access token")
    return claims


def session_reference(session_id: str) -> str:
    """How the audit log names a session: a digest that tells one session's entries
    apart from another's but cannot be turned back into the session id."""
    return "sessref_" + sha256_hex(session_id)[:24]


# --- opaque tokens -----------------------------------------------------------------------
def new_refresh_token() -> str:
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(_REFRESH_TOKEN_BYTES)


def refresh_token_is_well_formed(token: str) -> bool:
    """Format only: garbage is refused without a database lookup."""
    return _REFRESH_TOKEN_FORMAT.fullmatch(token) is not None


def new_invitation_token() -> str:
    return "mi_" + secrets.token_urlsafe(32)


# --- API keys ----------------------------------------------------------------------------
def _checksum(random_part: str) -> str:
    value = zlib.crc32(random_part.encode())
    chars = []
    for _ in range(_CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        chars.append(_BASE62[digit])
    return "".join(reversed(chars))


@dataclass(frozen=True)
class NewApiKey:
    key: str  # shown once, never stored
    prefix: str  # stored and shown, identifies the key in lists
    key_hash: str


def generate_api_key() -> NewApiKey:
    random_part = "".join(secrets.choice(_BASE62) for _ in range(_API_KEY_RANDOM_LENGTH))
    key = f"{API_KEY_PREFIX}{random_part}_{_checksum(random_part)}"
    return NewApiKey(key=key, prefix=key[: len(API_KEY_PREFIX) + 8], key_hash=sha256_hex(key))


def api_key_is_well_formed(key: str) -> bool:
    """Format and checksum: rejects typos and garbage without touching the database."""
    if not key.startswith(API_KEY_PREFIX) or len(key) != len(API_KEY_PREFIX) + _API_KEY_RANDOM_LENGTH + 1 + 6:
        return False
    random_part, _, checksum = key[len(API_KEY_PREFIX) :].partition("_")
    if len(random_part) != _API_KEY_RANDOM_LENGTH or any(c not in _BASE62 for c in random_part):
        return False
    return secrets.compare_digest(checksum, _checksum(random_part))
