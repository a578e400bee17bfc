"""Mutual TLS for every channel (client-gateway, gateway-node, node-node) and role checks.

Certificates come from `orbitvault pki` (`orbitvault.ground.pki`): one CA, and a role in each
certificate's SAN URI (`orbitvault:role:node|gateway|client`). Servers require a client
certificate signed by the CA (`require_client_auth`), so a peer with a certificate from another CA,
an expired one, or none at all never gets past the handshake; clients verify the server against
the same CA and the address they dial (SAN DNS/IP), so a man in the middle with any other
certificate is refused. Extended key usage keeps client certificates from serving.

What a verified peer may call is decided by its role, in the servicer (`RoleCheck.require`), from
the call's auth context, which gRPC fills only from the verified certificate.

Plaintext exists for local development only and must be asked for (`insecure = true`, `--insecure`):
a server or client given neither TLS files nor `insecure` refuses to start, so a forgotten setting
never silently means "no encryption".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from orbitvault.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from orbitvault.ground.pki import ROLE_URI_PREFIX, PeerIdentity, Role

NODE_OR_GATEWAY = frozenset({Role.NODE, Role.GATEWAY})
CLIENT_OR_GATEWAY = frozenset({Role.CLIENT, Role.GATEWAY})


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The three PEM files one party needs: the CA to verify peers, its certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        out = []
        for what, path in (("tls_ca", self.ca), ("tls_cert", self.cert), ("tls_key", self.key)):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise FailedPrecondition(f"cannot read {what} {path}: {exc.strerror or exc}") from None
            if b"-----BEGIN" not in data:
                raise FailedPrecondition(f"{what} {path} is not a PEM file")
            out.append(data)
        return out[0], out[1], out[2]


def tls_files(config: Any, what: str) -> TlsFiles | None:
    """The TLS files a node or gateway config names, or None when it asks for plaintext.

    Raises FailedPrecondition when it does neither: plaintext must be chosen explicitly.
    """
    ca, cert, key = (getattr(config, f"tls_{k}", None) for k in ("ca", "cert", "key"))
    insecure = bool(getattr(config, "insecure", False))
    if ca is not None and cert is not None and key is not None:
        if insecure:
            raise InvalidArgument(f"the {what} config sets both TLS files and insecure; drop one")
        return TlsFiles(Path(ca), Path(cert), Path(key))
    if insecure:
        return None
    raise FailedPrecondition(
        f"the {what} has no TLS configured: set tls_ca, tls_cert and tls_key (certificates from "
        f"`orbitvault pki issue`), or pass --insecure (insecure = true) for local development only"
    )


def client_tls(tls: TlsFiles | None, insecure: bool, what: str) -> TlsFiles | None:
    """A client's choice (SDK, CLI): TLS files, or plaintext only when `insecure` is explicit."""
    if tls is not None:
        if insecure:
            raise InvalidArgument(f"{what}: give TLS files or insecure, not both")
        return tls
    if insecure:
        return None
    raise InvalidArgument(
        f"{what}: no TLS given; pass the CA, a client certificate and its key (`orbitvault pki issue client "
        "NAME`), or insecure=True / --insecure for local development only"
    )


# --- credentials, channels, ports ----------------------------------------------------------------------


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """mTLS server credentials: the peer must present a certificate signed by the CA."""
    ca, cert, key = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """mTLS client credentials: verify the server against the CA, present our certificate."""
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def open_channel(
    address: str,
    files: TlsFiles | None,
    options: Sequence[tuple[str, Any]] = (),
    *,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.Channel:
    """A channel to `address`: mTLS with `files` (or ready `credentials`), plaintext with neither."""
    if credentials is None and files is not None:
        credentials = channel_credentials(files)
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=list(options))
    return grpc.insecure_channel(address, options=list(options))


def add_port(server: grpc.Server, listen: str, files: TlsFiles | None) -> int:
    """Bind `listen` with mTLS (or plaintext with None); returns the port (0 when binding failed)."""
    if files is None:
        return server.add_insecure_port(listen)
    return server.add_secure_port(listen, server_credentials(files))


# --- who is calling ------------------------------------------------------------------------------------


def peer_identity(context: grpc.ServicerContext) -> PeerIdentity | None:
    """The verified peer's role and name; None on a plaintext connection."""
    auth = context.auth_context() or {}
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    uris = _texts(auth.get("peer_uri", ()))
    roles = {u[len(ROLE_URI_PREFIX) :] for u in uris if u.startswith(ROLE_URI_PREFIX)}
    role: Role | None = None
    if len(roles) == 1:
        try:
            role = Role(roles.pop())
        except ValueError:
            role = None
    names = _texts(auth.get("x509_common_name", ()))
    return PeerIdentity(role, names[0] if names else "")


def _texts(values: Iterable[bytes]) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


class RoleCheck:
    """Authorizes calls by the caller's certificate role; a no-op on a plaintext server (there is
    no identity to check, which is why plaintext needs an explicit `insecure`)."""

    def __init__(self, *, tls: bool) -> None:
        self.tls = tls

    def require(self, context: grpc.ServicerContext, roles: frozenset[Role], what: str) -> PeerIdentity | None:
        """The caller's identity if its role is one of `roles`; else PermissionDenied."""
        if not self.tls:
            return None
        who = peer_identity(context)
        if who is None:  # cannot happen on a TLS port, but never let it through
            raise PermissionDenied(f"{what} needs a TLS client certificate")
        if who.role not in roles:
            allowed = " or ".join(sorted(r.value for r in roles))
            got = f"a {who.role.value} certificate" if who.role else "a certificate without an orbitvault role"
            raise PermissionDenied(
                f"{what} is allowed only to {allowed} certificates; the caller presented {got} "
                f"({who.name or 'no name'})"
            )
        return who


def describe_peer(context: grpc.ServicerContext) -> str:
    """`role:name` of a TLS peer, else its transport address (for audit records and logs)."""
    who = peer_identity(context)
    if who is not None:
        return str(who)
    return context.peer() or ""
