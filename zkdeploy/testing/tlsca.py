"""A throwaway certificate authority for tests: a CA, server and client certificates, as PEM files.

Made at test time with the ``cryptography`` package; nothing here is fit for
a real fleet (keys are unencrypted, validity is one day).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Issued:
    """One certificate and its key, as files (``bundle`` holds the key and the certificate)."""

    cert: Path
    key: Path
    bundle: Path
    subject: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zkdeploy-test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestCA:
    """A CA whose files live in ``directory``."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "zkdeploy test CA") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                      .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                      .not_valid_before(now - datetime.timedelta(minutes=5))
                      .not_valid_after(now + datetime.timedelta(days=1))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                      .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                   content_commitment=False, key_encipherment=False,
                                                   data_encipherment=False, key_agreement=False,
                                                   encipher_only=False, decipher_only=False), critical=True)
                      .sign(self._key, hashes.SHA256()))
        slug = name.replace(" ", "-")
        self.cert = self.dir / f"{slug}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> Issued:
        """A certificate for ``cn`` (server and client use) naming ``dns`` and ``ips``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self._cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                         x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        paths = Issued(self.dir / f"{cn}.crt", self.dir / f"{cn}.key", self.dir / f"{cn}.bundle.pem",
                       cert.subject.rfc4514_string())
        paths.cert.write_bytes(cert_pem)
        for path, data in ((paths.key, key_pem), (paths.bundle, key_pem + cert_pem)):
            path.write_bytes(data)
            path.chmod(0o600)
        return paths


def zookeeper_tls_lines(ca: TestCA, server: Issued, secure_port: int, client_auth: str = "want") -> list[str]:
    """zoo.cfg lines that open a TLS client port (Netty) with PEM key and trust stores."""
    return [
        "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
        f"secureClientPort={secure_port}", "secureClientPortAddress=127.0.0.1",
        "ssl.keyStore.type=PEM", f"ssl.keyStore.location={server.bundle}",
        "ssl.trustStore.type=PEM", f"ssl.trustStore.location={ca.cert}",
        f"ssl.clientAuth={client_auth}",
        "authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider",
    ]
