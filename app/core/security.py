"""Who may call the API, and how the worker reaches a secured Kafka, PostgreSQL and S3.

- ``Access``: the API's bearer tokens by scope (read, write, metrics), compared in constant time;
  several per scope, so a token is rotated by adding the new one, moving clients, then removing
  the old one, with no restart gap.
- ``kafka_options`` / ``faust_credentials``: one description of the Kafka connection (security
  protocol, SASL mechanism and user, CA file) for every Kafka client the worker and the sweeper
  open: Faust's consumer, producer and changelogs, and the admin and lag clients.
- ``tls_context``: a client TLS context that verifies the server's certificate and host name
  against a CA file (a private CA) or the system's trust store.
- ``describe``: what went wrong talking to a service, in words an operator can act on ("password
  authentication failed", "certificate not trusted"), never a secret and never a traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from app.core.settings import Settings

Scope = Literal["public", "read", "write", "metrics"]


def _digest(token: str) -> bytes:
    # Equal-length digests: compare_digest then takes the same time whatever the token's length.
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Access:
    """The API's tokens by scope. A write token also reads; the metrics tokens guard /metrics only.
    With no read or write token configured the API is open (a local stack on loopback)."""

    read: tuple[bytes, ...] = ()
    write: tuple[bytes, ...] = ()
    metrics: tuple[bytes, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        def digests(tokens: Iterable[SecretStr]) -> tuple[bytes, ...]:
            return tuple(_digest(t.get_secret_value()) for t in tokens)

        return cls(digests(settings.api_read_tokens), digests(settings.api_write_tokens),
                   digests(settings.metrics_tokens))

    @property
    def enabled(self) -> bool:
        return bool(self.read or self.write)

    @staticmethod
    def _matches(given: bytes, tokens: tuple[bytes, ...]) -> bool:
        # every token is compared (no early exit), so the time says nothing about which one matched
        found = False
        for token in tokens:
            found |= hmac.compare_digest(given, token)
        return found

    def allows(self, scope: Scope, authorization: str | None) -> bool:
        """Whether a request with this ``Authorization`` header may use a route of ``scope``."""
        if scope == "public" or not (self.metrics if scope == "metrics" else self.enabled):
            return True  # nothing configured for this scope: open
        if not authorization or not authorization.startswith("Bearer "):
            return False
        needed = {"read": self.read + self.write, "write": self.write, "metrics": self.metrics}[scope]
        return self._matches(_digest(authorization[7:].strip()), needed)


def tls_context(ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate chain and host name: against
    ``ca_file`` when given (a private CA), else the system's trust store. With ``cert_file`` and
    ``key_file`` it also presents a client certificate (mutual TLS)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def kafka_options(settings: Settings) -> dict:
    """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
    protocol = settings.kafka_security_protocol
    options: dict = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = tls_context(settings.kafka_ca_file, settings.kafka_cert_file, settings.kafka_key_file)
    if protocol.startswith("SASL_"):
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_username,
                       sasl_plain_password=settings.kafka_password.get_secret_value()
                       if settings.kafka_password else None)
    return options


def faust_credentials(settings: Settings):
    """``broker_credentials`` for the Faust app, which hands them to every client it opens."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    options = kafka_options(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(username=settings.kafka_username, password=options["sasl_plain_password"],
                                 ssl_context=options.get("ssl_context"), mechanism=settings.kafka_sasl_mechanism)


def postgres_ssl(settings: Settings) -> ssl.SSLContext | None:
    """asyncpg's ``ssl`` argument: with ``postgres_ca_file``, TLS that verifies the server's
    certificate and host name (libpq's ``sslmode=verify-full``) against that CA; otherwise None,
    and the DSN's own ``sslmode`` / ``sslrootcert`` decide."""
    if settings.postgres_ca_file is None:
        return None
    return tls_context(settings.postgres_ca_file)


def describe(exc: BaseException) -> str:
    """The cause of a failed connection in a few words, for /ready and the logs. Secrets never
    appear here: only the exception's type and the server's or the TLS library's own reason."""
    seen: set[int] = set()
    chain = []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({e.verify_message or e.reason}); check the CA file setting"
        name = type(e).__name__
        text = str(e)
        if "certificate verify failed" in text:  # the ssl module's words, wrapped by botocore or aiohttp
            reason = re.search(r"certificate verify failed: ([^'\])(]+)", text)
            return f"TLS certificate not trusted ({reason.group(1).strip() if reason else 'verify failed'}); " \
                   "check the CA file setting"
        if "InvalidCertificate(" in text:  # rustls, under obstore
            reason = re.search(r"InvalidCertificate\(\s*(\w+)", text)
            return f"TLS certificate not trusted ({reason.group(1) if reason else 'invalid'}); check the CA file setting"
        if name == "GenericError" and "Connect" in text:
            return "connection failed" + (" (connection refused)" if "refused" in text.lower() else "")
        if isinstance(e, ssl.SSLError):
            return f"TLS handshake failed ({e.reason or _short(text)})"
        if name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError"):
            return f"authentication failed: {_short(text)}"
        if name in ("SaslAuthenticationFailedError", "SaslAuthenticationFailed", "IllegalSaslStateError"):
            return f"authentication failed: {_short(text) or 'the broker refused the SASL credentials'}"
        if name == "UnsupportedSaslMechanismError":
            return f"SASL mechanism refused by the broker: {_short(text)}"
        if name == "ClientError" and hasattr(e, "response"):
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                return f"credentials refused ({code})"
            return f"request refused ({code or 'ClientError'})"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
    return type(chain[0]).__name__


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
