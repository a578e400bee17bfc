"""The PKI: roles in certificates, lifetimes, SANs, files that are never overwritten."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orbitvault.cli import cli
from orbitvault.errors import AlreadyExists, InvalidArgument, NotFound
from orbitvault.ground import pki


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    pki.init(tmp_path / "pki")
    return tmp_path / "pki"


def test_ca_signs_leaves_only_and_keeps_its_key_private(ca_dir: Path) -> None:
    ca = _load(ca_dir / "ca.crt")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    assert (ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    assert pki.role_of(ca) is None
    with pytest.raises(AlreadyExists):
        pki.init(ca_dir)


@pytest.mark.parametrize(
    ("role", "days", "server"), [("node", 365, True), ("gateway", 365, True), ("client", 90, False)]
)
def test_role_lifetime_and_usage(ca_dir: Path, role: str, days: int, server: bool) -> None:
    issued = pki.issue(ca_dir, role, f"x-{role}")
    cert = _load(issued.cert_path)
    assert pki.role_of(cert) is pki.Role(role)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == role
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=days) <= life <= dt.timedelta(days=days, minutes=6)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert (ExtendedKeyUsageOID.SERVER_AUTH in eku) is server
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca = _load(ca_dir / "ca.crt")
    cert.verify_directly_issued_by(ca)
    assert issued.key_path.stat().st_mode & 0o777 == 0o600


def test_sans_given_or_loopback_for_servers(ca_dir: Path) -> None:
    node = pki.issue(ca_dir, "node", "sat-a1", dns=["sat-a1.example"], ips=["10.0.0.5", "fd00::5"]).info
    assert node.dns == ("sat-a1.example",) and node.ips == ("10.0.0.5", "fd00::5")
    local = pki.issue(ca_dir, "gateway", "gw").info
    assert local.dns == ("localhost",) and local.ips == ("127.0.0.1", "::1")
    client = pki.issue(ca_dir, "client", "alice").info
    assert client.dns == () and client.ips == ()


def test_never_overwrites_and_checks_names(ca_dir: Path) -> None:
    pki.issue(ca_dir, "client", "alice")
    before = (ca_dir / "alice.crt").read_bytes()
    with pytest.raises(AlreadyExists):
        pki.issue(ca_dir, "node", "alice")
    assert (ca_dir / "alice.crt").read_bytes() == before
    for bad in ("", "../x", "a/b", "ca", "-x", "n" * 65):
        with pytest.raises(InvalidArgument):
            pki.issue(ca_dir, "client", bad)
    with pytest.raises(InvalidArgument):
        pki.issue(ca_dir, "node", "n1", dns=["not a name"])
    with pytest.raises(InvalidArgument):
        pki.issue(ca_dir, "node", "n2", ips=["10.0.0.300"])
    with pytest.raises(ValueError):
        pki.issue(ca_dir, "admin", "n3")
    with pytest.raises(NotFound, match="pki init"):
        pki.issue(ca_dir / "nope", "client", "bob")


def test_a_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    pki.init(tmp_path, days=30)
    issued = pki.issue(tmp_path, "node", "n", days=365)
    assert issued.info.not_after <= _load(tmp_path / "ca.crt").not_valid_after_utc


def test_contradictory_or_foreign_roles_are_no_role(ca_dir: Path) -> None:
    ca_cert, ca_key = pki.load_ca(ca_dir)
    key = pki.new_key()
    now = dt.datetime.now(dt.UTC)
    both = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "both")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("orbitvault:role:client"),
                    x509.UniformResourceIdentifier("orbitvault:role:gateway"),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    assert pki.role_of(both) is None
    ident = pki.identity_from_pem(pki.cert_pem(both))
    assert ident.role is None and ident.name == "both"
    assert pki.identity_from_pem(b"garbage").role is None


def test_cli_init_issue_show(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "p"
    assert runner.invoke(cli, ["pki", "init", "--dir", str(d)]).exit_code == 0
    out = runner.invoke(cli, ["pki", "issue", "node", "sat-1", "--ip", "10.1.2.3", "--dir", str(d)])
    assert out.exit_code == 0, out.output
    shown = runner.invoke(cli, ["pki", "show", str(d / "sat-1.crt")])
    assert "role:       node" in shown.output and "10.1.2.3" in shown.output
    again = runner.invoke(cli, ["pki", "issue", "client", "sat-1", "--dir", str(d)])
    assert again.exit_code == 1 and "never overwritten" in again.output and "Traceback" not in again.output
