"""A second factor for destructive operations: TOTP (RFC 6238) per tenant, like S3 MFA Delete.

Once a tenant enables MFA (`orbitvault gateway mfa enable TENANT`, which shows the secret and an
otpauth:// URI for an authenticator app), deleting objects or buckets, overwriting objects,
shortening or removing retention, lifting a legal hold and deleting API keys need a current code:
a stolen API key alone can no longer destroy backups.

- Codes: HMAC-SHA-1, 30-second steps from the Unix epoch, 6 digits (RFC 6238's defaults, what every
  authenticator app does); one step of tolerance either way for clock skew.
- Replay: a code is accepted only for a time step later than the last one used (kept in the
  catalog, checked and advanced in one transaction), so a code seen over a shoulder or in a log
  is worthless once used.
- Sessions: batch work (a prune deleting many packs) cannot wait 30 s per delete, so a verified
  code yields a session token (`ovm_...`) for the same tenant and API key, valid `mfa_session_s`
  (default 5 minutes), signed with a key derived from the master key. Disabling MFA and enabling it
  again invalidates all sessions.
- Guessing: more than `MAX_FAILURES` wrong codes within `LOCKOUT_S` lock the tenant's MFA for
  `LOCKOUT_S` (in memory, per gateway process): 6 digits with 3 valid codes per window do not
  survive a brute force, and a lock-out only delays destructive calls.
- Secrets are wrapped (AES-256-GCM) with a key derived from the master key, like tenant keys.
- Exempt patterns (glob over the object key, e.g. `locks/*`) let unattended clients remove their
  own lock objects; use them only for objects whose loss costs nothing.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import os
import struct
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag

from orbitvault.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted
from orbitvault.ground.crypto import unwrap_key, wrap_key

STEP_S = 30
DIGITS = 6
WINDOW = 1  # steps accepted either side of now
SECRET_LEN = 20  # 160 bits, RFC 4226's recommendation for HMAC-SHA-1
SESSION_PREFIX = "ovm_"
MAX_FAILURES = 5
LOCKOUT_S = 300.0
MAX_EXEMPT = 8
MAX_PATTERN = 256
ISSUER = "orbitvault"
_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


# --- RFC 4226 / RFC 6238 --------------------------------------------------------------------------------


def hotp(secret: bytes, counter: int, *, digits: int = DIGITS, algorithm: str = "sha1") -> str:
    """RFC 4226: HMAC of the 8-byte counter, dynamic truncation, `digits` decimal digits."""
    mac = hmac.new(secret, struct.pack(">Q", counter), _ALGORITHMS[algorithm]).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def time_step(unix_s: float, *, step: int = STEP_S, t0: int = 0) -> int:
    return int((unix_s - t0) // step)


def totp(secret: bytes, unix_s: float, *, step: int = STEP_S, digits: int = DIGITS, algorithm: str = "sha1") -> str:
    """RFC 6238: HOTP of the time step T = floor((unix time - T0) / X)."""
    return hotp(secret, time_step(unix_s, step=step), digits=digits, algorithm=algorithm)


def match_step(secret: bytes, code: str, unix_s: float, *, window: int = WINDOW) -> int | None:
    """The time step `code` belongs to, within `window` steps of now; None if it matches none.

    Every candidate is compared (constant time), so timing does not tell which one matched.
    """
    now = time_step(unix_s)
    found = None
    for t in range(now - window, now + window + 1):
        if hmac.compare_digest(hotp(secret, t), code) and found is None:
            found = t
    return found


def check_code(code: object) -> str:
    if not isinstance(code, str) or len(code) != DIGITS or not code.isascii() or not code.isdigit():
        raise PermissionDenied(f"an MFA code is {DIGITS} digits from the tenant's authenticator app")
    return code


def generate_secret() -> bytes:
    return os.urandom(SECRET_LEN)


def secret_b32(secret: bytes) -> str:
    return base64.b32encode(secret).decode().rstrip("=")


def otpauth_uri(secret: bytes, tenant: str, *, issuer: str = ISSUER) -> str:
    """The Key Uri Format authenticator apps read (also as a QR code)."""
    label = urllib.parse.quote(f"{issuer}:{tenant}", safe=":@")
    query = urllib.parse.urlencode(
        {"secret": secret_b32(secret), "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": STEP_S}
    )
    return f"otpauth://totp/{label}?{query}"


# --- records --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MfaRecord:
    """A tenant's MFA as the catalog keeps it (table `mfa`, key = tenant)."""

    tenant: str
    wrapped_secret: bytes
    enabled_unix_ms: int
    last_step: int = -1
    exempt: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "wrapped_secret": self.wrapped_secret.hex(),
            "enabled": self.enabled_unix_ms,
            "last_step": self.last_step,
            "exempt": list(self.exempt),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MfaRecord:
        return cls(
            d["tenant"],
            bytes.fromhex(d["wrapped_secret"]),
            int(d["enabled"]),
            int(d.get("last_step", -1)),
            tuple(d.get("exempt", ())),
        )

    def exempts(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.exempt)


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What `mfa enable` shows once: the secret (base32) and the otpauth:// URI."""

    tenant: str
    secret_b32: str
    uri: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Grant:
    """A second factor verified by `Gateway.authorize_mfa` for one tenant and key: how (code or
    session), and the session token to reuse ("" when sessions are off). Adapters pass it on to
    the destructive call they verified it for, which accepts it in place of the code."""

    tenant: str
    key_id: str
    via: str
    session: str
    expires_unix_ms: int


def check_exempt(patterns: Sequence[str]) -> tuple[str, ...]:
    out = tuple(patterns)
    if len(out) > MAX_EXEMPT:
        raise InvalidArgument(f"at most {MAX_EXEMPT} exempt patterns")
    for p in out:
        if not isinstance(p, str) or not p or len(p) > MAX_PATTERN or any(ord(c) < 32 for c in p):
            raise InvalidArgument(f"exempt pattern {p!r} must be 1..{MAX_PATTERN} printable characters")
        if p in ("*", "**"):
            raise InvalidArgument(f"exempt pattern {p!r} would exempt everything; disable MFA instead")
    return out


def wrap_secret(kek: bytes, tenant: str, secret: bytes) -> bytes:
    return wrap_key(kek, secret + bytes(32 - len(secret)), _aad(tenant))


def unwrap_secret(kek: bytes, tenant: str, wrapped: bytes) -> bytes:
    try:
        return unwrap_key(kek, wrapped, _aad(tenant))[:SECRET_LEN]
    except InvalidTag:
        raise FailedPrecondition(f"tenant {tenant!r}: its MFA secret does not open with this master key") from None


def _aad(tenant: str) -> bytes:
    return b"mfa\x00" + tenant.encode()


# --- sessions -------------------------------------------------------------------------------------------


def issue_session(key: bytes, rec: MfaRecord, key_id: str, expires_unix_ms: int) -> str:
    return f"{SESSION_PREFIX}{expires_unix_ms}_{_session_tag(key, rec, key_id, expires_unix_ms)}"


def check_session(key: bytes, rec: MfaRecord, key_id: str, token: str, now_ms: int) -> bool:
    """True if `token` was issued for this tenant's current enrolment and key and has not expired."""
    body = token[len(SESSION_PREFIX) :]
    expires, _, tag = body.partition("_")
    if not expires.isdigit() or len(expires) > 16 or len(tag) != 64:
        return False
    if int(expires) <= now_ms:
        return False
    return hmac.compare_digest(tag, _session_tag(key, rec, key_id, int(expires)))


def _session_tag(key: bytes, rec: MfaRecord, key_id: str, expires: int) -> str:
    msg = f"{rec.tenant}\x00{key_id}\x00{expires}\x00{rec.enabled_unix_ms}".encode()
    return blake3.blake3(msg, key=key).hexdigest()


# --- guessing -------------------------------------------------------------------------------------------


class Lockout:
    """Wrong codes per tenant in a sliding window; too many lock the tenant's MFA for a while."""

    def __init__(
        self, *, max_failures: int = MAX_FAILURES, window_s: float = LOCKOUT_S, monotonic: Any = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._now = monotonic
        self._fails: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, tenant: str) -> None:
        with self._lock:
            until = self._locked_until.get(tenant, 0.0)
            if until > self._now():
                raise ResourceExhausted(
                    f"too many wrong MFA codes for tenant {tenant!r}: MFA is locked for "
                    f"{until - self._now():.0f} s more; then send a current code"
                )

    def failed(self, tenant: str) -> bool:
        """Count a wrong code; True if this one locked the tenant."""
        now = self._now()
        with self._lock:
            q = self._fails.setdefault(tenant, deque())
            q.append(now)
            while q and q[0] < now - self.window_s:
                q.popleft()
            if len(q) >= self.max_failures:
                self._locked_until[tenant] = now + self.window_s
                q.clear()
                return True
        return False
