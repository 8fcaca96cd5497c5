"""The secured local stack (``imgstream stack up --secure``): the same three services beside the
plain ones, on their own ports and state, the way a production cluster runs them:

- Kafka with one SASL_SSL listener (SCRAM-SHA-512 and PLAIN), its admin user created when the
  storage is formatted and the worker's user with Kafka's own ConfigCommand (as an operator would);
- PostgreSQL that accepts only TLS connections (``hostssl``) with a password;
- versitygw serving S3 over HTTPS.

Every certificate is made here for the run: a CA, and one server certificate for 127.0.0.1 and
localhost signed by it. The passwords and the API's tokens are random, made once and kept in
``<state_dir>/secure/secrets.json`` (mode 0600); ``<state_dir>/secure/imgstream.env`` holds the
worker's settings for this stack (``set -a; . var/secure/imgstream.env; set +a`` then
``imgstream worker``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from app.core.settings import Settings

PORTS = {"kafka": 9192, "postgres": 5434, "s3": 7071}
KAFKA_USER = "imgstream"
KAFKA_ADMIN = "admin"
SECRET_NAMES = ("kafka_admin_password", "kafka_password", "postgres_password", "s3_access_key", "s3_secret_key",
                "api_write_token", "api_read_token", "metrics_token")


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``path`` readable by its owner only, also where it already existed with another mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


@dataclass(frozen=True)
class SecureStack:
    root: Path

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.tls / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.tls / "server.key"

    @property
    def env_file(self) -> Path:
        return self.root / "imgstream.env"

    @cached_property
    def secrets(self) -> dict[str, str]:
        return json.loads((self.root / "secrets.json").read_text())

    def env(self, base: Settings) -> dict[str, str]:
        """The worker's settings for this stack, as IMGSTREAM_* variables (the database keeps the
        base settings' name, so the tests' database has its secured twin)."""
        s = self.secrets
        database = (urlparse(base.postgres_dsn.get_secret_value()).path or "/imgstream").lstrip("/")
        return {
            "IMGSTREAM_STATE_DIR": str(self.root),
            "IMGSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{PORTS['kafka']}",
            "IMGSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "IMGSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "IMGSTREAM_KAFKA_USERNAME": KAFKA_USER,
            "IMGSTREAM_KAFKA_PASSWORD": s["kafka_password"],
            "IMGSTREAM_KAFKA_CA_FILE": str(self.ca_file),
            "IMGSTREAM_POSTGRES_DSN": f"postgresql://imgstream:{s['postgres_password']}@127.0.0.1:"
                                      f"{PORTS['postgres']}/{database}",
            "IMGSTREAM_POSTGRES_PORT": str(PORTS["postgres"]),
            "IMGSTREAM_POSTGRES_CA_FILE": str(self.ca_file),
            "IMGSTREAM_S3_ENDPOINT": f"https://127.0.0.1:{PORTS['s3']}",
            "IMGSTREAM_S3_CA_FILE": str(self.ca_file),
            "IMGSTREAM_S3_ACCESS_KEY": s["s3_access_key"],
            "IMGSTREAM_S3_SECRET_KEY": s["s3_secret_key"],
            "IMGSTREAM_API_WRITE_TOKENS": s["api_write_token"],
            "IMGSTREAM_API_READ_TOKENS": s["api_read_token"],
            "IMGSTREAM_METRICS_TOKENS": s["metrics_token"],
        }

    def settings(self, base: Settings) -> Settings:
        return Settings(**{k.removeprefix("IMGSTREAM_").lower(): v for k, v in self.env(base).items()})


def prepare(base: Settings) -> SecureStack:
    """The secured stack's folder with its secrets, certificates and env file; made once, kept."""
    stack = SecureStack(base.state_dir.resolve() / "secure")
    path = stack.root / "secrets.json"
    if not path.exists():
        made = {name: secrets.token_urlsafe(24) for name in SECRET_NAMES}
        made["s3_access_key"] = "imgstream" + secrets.token_hex(6)
        write_private(path, json.dumps(made, indent=1).encode())
    if not stack.server_cert.exists():
        make_certificates(stack.tls)
    write_private(stack.env_file, "".join(f"{k}={v}\n" for k, v in stack.env(base).items()).encode())
    return stack


def make_certificates(folder: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 365) -> None:
    """A CA (``ca.pem``, ``ca.key``) and a server certificate for ``hosts`` signed by it
    (``server.pem``, ``server.key``; ``server-keystore.pem`` holds both for Kafka's PEM keystore)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgstream local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(validity[0]).not_valid_after(validity[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(h)) if h.replace(".", "").isdigit() else x509.DNSName(h)
             for h in hosts]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(validity[0]).not_valid_after(validity[1])
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    pem = serialization.Encoding.PEM
    write_private(folder / "ca.key", key_pem(ca_key))
    write_private(folder / "server.key", key_pem(key))
    write_private(folder / "server-keystore.pem", key_pem(key) + cert.public_bytes(pem) + ca.public_bytes(pem))
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
