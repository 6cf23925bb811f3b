"""Certificates and the kubeconfig of the local cluster.

One small CA signs the apiserver's serving certificate and an admin client certificate
(group ``system:masters``), the way controller-runtime's envtest provisions its users; a separate
RSA key signs service-account tokens. Everything is written into the cluster's state directory.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "issue_pki", "issue_webhook_certs", "write_kubeconfig"]

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class Pki:
    """Paths of the files the control plane's components are started with."""

    ca_cert: Path
    ca_key: Path
    apiserver_cert: Path
    apiserver_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
             form: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


_Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _ca(name: x509.Name, now: dt.datetime, sans: list[x509.GeneralName] | None = None, key: _Key | None = None
        ) -> tuple[x509.Certificate, _Key]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()), key


def _leaf(ca: x509.Certificate, ca_key: _Key, subject: x509.Name, usage: x509.ObjectIdentifier,
          now: dt.datetime, sans: list[x509.GeneralName] | None = None, key: _Key | None = None
          ) -> tuple[x509.Certificate, _Key]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def issue_pki(directory: Path, service_ip: str = "10.96.0.1") -> Pki:
    """Create the CA, the serving and client certificates and the service-account key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_cert, ca_key = _ca(_name("mimo-local-cluster-ca"), now)
    dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
           "kubernetes.default.svc.cluster.local"]
    serving_sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    serving_sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", service_ip)]
    api_cert, api_key = _leaf(ca_cert, ca_key, _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, now,
                              serving_sans)
    admin_cert, admin_key = _leaf(ca_cert, ca_key, _name("mimo-local-admin", "system:masters"),
                                  ExtendedKeyUsageOID.CLIENT_AUTH, now)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pem = serialization.Encoding.PEM
    return Pki(
        ca_cert=_write(directory / "ca.crt", ca_cert.public_bytes(pem)),
        ca_key=_write(directory / "ca.key", _pem_key(ca_key), private=True),
        apiserver_cert=_write(directory / "apiserver.crt", api_cert.public_bytes(pem)),
        apiserver_key=_write(directory / "apiserver.key", _pem_key(api_key), private=True),
        admin_cert=_write(directory / "admin.crt", admin_cert.public_bytes(pem)),
        admin_key=_write(directory / "admin.key", _pem_key(admin_key), private=True),
        sa_key=_write(directory / "sa.key", _pem_key(sa_key), private=True),
        sa_pub=_write(
            directory / "sa.pub",
            sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
        ),
    )


def issue_webhook_certs(directory: Path, ca_name: str, dns_name: str) -> dict[str, bytes]:
    """A webhook server's own CA and serving certificate, for ``dns_name`` and 127.0.0.1, written to
    ``directory`` as ca.crt, ca.key, tls.crt and tls.key (the names controller-runtime's webhook server and
    cert-controller's Secret use) and returned by those names. What cert-controller checks before it keeps
    a CA it did not make: RSA keys in PKCS #1, and the CA naming itself in a SAN."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_cert, ca_key = _ca(_name(ca_name), now, [x509.DNSName(ca_name)],
                          rsa.generate_private_key(public_exponent=65537, key_size=2048))
    cert, key = _leaf(ca_cert, ca_key, _name(dns_name), ExtendedKeyUsageOID.SERVER_AUTH, now,
                      [x509.DNSName(dns_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                      rsa.generate_private_key(public_exponent=65537, key_size=2048))
    pem, pkcs1 = serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL
    files = {"ca.crt": ca_cert.public_bytes(pem), "ca.key": _pem_key(ca_key, pkcs1),
             "tls.crt": cert.public_bytes(pem), "tls.key": _pem_key(key, pkcs1)}
    for name, data in files.items():
        _write(directory / name, data, private=name.endswith(".key"))
    return files


def write_kubeconfig(path: Path, pki: Pki, server: str, context: str = "mimo-local") -> Path:
    """A kubeconfig with the CA and the admin client certificate embedded as ``*-data`` fields."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)}}],
        "users": [{"name": context, "user": {
            "client-certificate-data": b64(pki.admin_cert), "client-key-data": b64(pki.admin_key)}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
