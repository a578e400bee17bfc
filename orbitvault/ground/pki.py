"""The constellation's private PKI: a CA and the certificates of nodes, gateways and clients.

Every gRPC channel is mutual TLS under one CA (`orbitvault pki init`); what a peer may do is
decided by the *role* written into its certificate, not by its address, so a stolen client
certificate cannot write shards and a node cannot pose as a client. The role travels in two
places a verifier can read: a SAN URI `orbitvault:role:<role>` (what `role_of` reads) and the
subject's OU (for humans and `openssl x509 -text`). Extended key usage matches the role too:
nodes and gateways are servers and clients (nodes call peers, gateways call nodes), clients only
clients, so a client certificate is refused by TLS itself when presented as a server.

Keys are ECDSA P-256 (small, fast handshakes, supported by gRPC's BoringSSL); signatures SHA-256.
Lifetimes: CA 10 years, node and gateway 1 year, client 90 days (short, since there is no
revocation list: retire a certificate by letting it expire or by re-keying the CA). `not_before`
is back-dated 5 minutes for clock skew between ground and orbit.

Files in the PKI directory: `ca.crt`, `ca.key` (0600) and `<name>.crt`, `<name>.key` (0600) per
issued certificate; nothing is ever overwritten. This module is domain code: no grpc here (the
credentials are built in `orbitvault.grpc.tls`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orbitvault.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound


class Role(StrEnum):
    """What a certificate's holder is; the servers authorize calls by it."""

    NODE = "node"
    GATEWAY = "gateway"
    CLIENT = "client"


ROLE_URI_PREFIX = "orbitvault:role:"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650
LIFETIME_DAYS: dict[Role, int] = {Role.NODE: 365, Role.GATEWAY: 365, Role.CLIENT: 90}
SKEW = dt.timedelta(minutes=5)
MAX_DAYS = 3650
ORGANIZATION = "orbitvault"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS = re.compile(rf"^(?=.{{1,253}}$)(\*\.)?{_LABEL}(\.{_LABEL})*$")
# Servers issued without --dns/--ip get these, so local development works out of the box.
LOCAL_DNS = ("localhost",)
LOCAL_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What an issued certificate says, for printing and tests."""

    name: str
    role: Role | None
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    sha256: str

    @property
    def is_ca(self) -> bool:
        return self.role is None


@dataclass(frozen=True, slots=True)
class Issued:
    """Where `issue` wrote a certificate and its key."""

    cert_path: Path
    key_path: Path
    info: CertInfo


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is at the other end of a verified TLS connection."""

    role: Role | None
    name: str

    def __str__(self) -> str:
        return f"{self.role or 'unknown'}:{self.name}"


# --- pure certificate building (no files) -------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    name: str = "orbitvault CA", *, days: int = CA_DAYS, now: dt.datetime | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate (path length 0: it signs leaves only)."""
    now = now or _utcnow()
    key = new_key()
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + dt.timedelta(days=_days(days)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    role: Role,
    name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for `role` named `name`, signed by the CA. Explicit times are for tests
    (an expired certificate); otherwise now - 5 min .. now + the role's lifetime."""
    role = Role(role)
    check_name(name)
    dns_names = [check_dns(d) for d in dns]
    ip_addrs = [check_ip(i) for i in ips]
    now = _utcnow()
    start = not_before or now - SKEW
    end = not_after or now + dt.timedelta(days=LIFETIME_DAYS[role])
    if end <= start:
        raise InvalidArgument("a certificate must end after it starts")
    key = new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role.value)]
    sans += [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(a) for a in ip_addrs]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role is not Role.CLIENT:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- reading roles ------------------------------------------------------------------------------------


def role_of(cert: x509.Certificate) -> Role | None:
    """The role in the certificate's SAN URI, or None (a CA, or a certificate from elsewhere)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    roles = {
        uri[len(ROLE_URI_PREFIX) :]
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(ROLE_URI_PREFIX)
    }
    if len(roles) != 1:
        return None  # none, or contradictory: trust neither
    try:
        return Role(roles.pop())
    except ValueError:
        return None


@lru_cache(maxsize=256)
def identity_from_pem(pem: bytes) -> PeerIdentity:
    """Role and common name of a peer's (already verified) certificate; cached, since servers ask
    on every call and a connection presents the same certificate each time."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return PeerIdentity(None, "")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    return PeerIdentity(role_of(cert), name)


def describe(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertInfo(
        name=str(names[0].value) if names else "",
        role=role_of(cert),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns=dns,
        ips=ips,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


# --- the PKI directory --------------------------------------------------------------------------------


def init(directory: str | Path, *, name: str = "orbitvault CA", days: int = CA_DAYS) -> CertInfo:
    """Create the CA in `directory` (made if missing); refuses if one is already there."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if (d / CA_CERT).exists() or (d / CA_KEY).exists():
        raise AlreadyExists(f"{d} already holds a CA ({CA_CERT}); use another directory or keep this one")
    cert, key = make_ca(name, days=days)
    _write_new(d / CA_KEY, key_pem(key), 0o600)
    _write_new(d / CA_CERT, cert_pem(cert), 0o644)
    return describe(cert)


def load_ca(directory: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    d = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError:
        raise NotFound(f"no CA in {d}: run `orbitvault pki init --dir {d}` first") from None
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot read the CA in {d}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FailedPrecondition(f"{d / CA_KEY} is not an EC private key")
    return cert, key


def issue(
    directory: str | Path,
    role: Role | str,
    name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int | None = None,
) -> Issued:
    """Issue `<name>.crt` and `<name>.key` for `role` with the CA in `directory`.

    A node or gateway certificate without any --dns/--ip gets localhost, 127.0.0.1 and ::1 (local
    development); in a deployment give the names and addresses peers dial, since TLS checks the
    address a client connects to against these SANs.
    """
    role = Role(role)
    check_name(name)
    if name.lower() == "ca":
        raise InvalidArgument('"ca" names the CA\'s own files; choose another name')
    d = Path(directory)
    ca_cert, ca_key = load_ca(d)
    if role is not Role.CLIENT and not dns and not ips:
        dns, ips = LOCAL_DNS, LOCAL_IPS
    now = _utcnow()
    lifetime = dt.timedelta(days=_days(days if days is not None else LIFETIME_DAYS[role]))
    end = min(now + lifetime, ca_cert.not_valid_after_utc)  # never outlive the CA
    cert_path, key_path = d / f"{name}.crt", d / f"{name}.key"
    for p in (cert_path, key_path):
        if p.exists():
            raise AlreadyExists(f"{p} exists; certificates are never overwritten (choose another name)")
    cert, key = make_leaf(ca_cert, ca_key, role, name, dns=dns, ips=ips, not_before=now - SKEW, not_after=end)
    _write_new(key_path, key_pem(key), 0o600)
    _write_new(cert_path, cert_pem(cert), 0o644)
    return Issued(cert_path, key_path, describe(cert))


# --- checks -------------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(
            f"certificate name {name!r} must be 1-64 characters of letters, digits, '.', '_' or '-' "
            "(it names the files)"
        )
    return name


def check_dns(name: str) -> str:
    if not isinstance(name, str) or not _DNS.match(name):
        raise InvalidArgument(f"{name!r} is not a DNS name")
    return name.lower()


def check_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise InvalidArgument(f"{value!r} is not an IP address") from None


def _days(days: int) -> int:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise InvalidArgument(f"lifetime must be 1..{MAX_DAYS} days, got {days!r}")
    return days


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode`; never replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise AlreadyExists(f"{path} exists; refusing to overwrite it") from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
