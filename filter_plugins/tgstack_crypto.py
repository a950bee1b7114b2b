"""Password verifiers computed on the controller, stable across runs.

``scram_sha256_verifier`` returns the PostgreSQL verifier
``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5802 / RFC 7677, as
``pg_authid.rolpassword`` stores it) for a password. PgBouncer reads the same string from
``userlist.txt``; because PostgreSQL holds the *identical* verifier
(same salt, same iteration count), PgBouncer can reuse the keys of a client's SCRAM exchange to
log in to the server as that client (SCRAM pass-through) without knowing the password.

``rabbitmq_password_hash`` returns the ``password_hash`` of a RabbitMQ definitions file for
``rabbit_password_hashing_sha256``: base64(salt || SHA-256(salt || password)), 4-byte salt.

Salts are derived from the password itself with PBKDF2-HMAC-SHA-256 (salted with a fixed label
and the user name, same iteration count as the verifier), so the output is deterministic:
re-running the play yields the same file and reports no change. Deriving the salt costs as
much work as the verifier, so it gives no shortcut to guessing the password, and a different
password always changes the salt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

DOCUMENTATION = """
name: scram_sha256_verifier
short_description: PostgreSQL/PgBouncer SCRAM-SHA-256 verifier with a salt derived from the password
"""

_LABEL_SCRAM = b"tgstack/scram-sha-256/salt"
_LABEL_RABBITMQ = b"tgstack/rabbitmq-sha256/salt"


class FilterError(ValueError):
    """Invalid input to a tgstack filter (the message names the argument)."""


def _text(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or value == "":
        raise FilterError(f"{name} must be a non-empty string")
    return value.encode("utf-8")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _derived_salt(
    password: bytes, label: bytes, context: bytes, iterations: int, size: int
) -> bytes:
    return hashlib.pbkdf2_hmac(
        "sha256", password, label + b"\x00" + context, iterations, dklen=size
    )


def scram_sha256_verifier(password: Any, user: Any = "", iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier of ``password`` (the salt depends on password and user).

    PostgreSQL does not SASLprep-normalise ASCII passwords, and the generated secrets are ASCII;
    a non-ASCII password is used as its UTF-8 bytes, as PostgreSQL does when SASLprep fails.
    """
    secret = _text(password, "password")
    context = user.encode("utf-8") if isinstance(user, str) else b""
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 4096:
        raise FilterError("iterations must be an integer >= 4096")
    salt = _derived_salt(secret, _LABEL_SCRAM, context, iterations, 16)
    salted = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def rabbitmq_password_hash(password: Any, user: Any = "") -> str:
    """RabbitMQ ``password_hash`` (rabbit_password_hashing_sha256) with a derived 4-byte salt."""
    secret = _text(password, "password")
    context = user.encode("utf-8") if isinstance(user, str) else b""
    salt = _derived_salt(secret, _LABEL_RABBITMQ, context, 4096, 4)
    return _b64(salt + hashlib.sha256(salt + secret).digest())


class FilterModule:
    """tgstack filters: ``scram_sha256_verifier``, ``rabbitmq_password_hash``."""

    def filters(self) -> dict[str, Any]:
        return {
            "scram_sha256_verifier": scram_sha256_verifier,
            "rabbitmq_password_hash": rabbitmq_password_hash,
        }
