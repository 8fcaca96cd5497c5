"""Who may call what (app/core/security.Access), the Kafka clients' connection options, and the causes
an operator reads in /ready when a connection to a secured service fails."""

from __future__ import annotations

import ssl

import pytest

from app.core.security import Access, describe, kafka_options
from app.core.settings import Settings


def _access(**tokens: str) -> Access:
    return Access.from_settings(Settings(**tokens))


@pytest.mark.parametrize("scope,header,allowed", [
    ("public", None, True),
    ("read", None, False), ("read", "Bearer r1", True), ("read", "Bearer r2", True), ("read", "Bearer w1", True),
    ("read", "Bearer nope", False), ("read", "r1", False), ("read", "Basic r1", False),
    ("write", "Bearer w1", True), ("write", "Bearer w2", True), ("write", "Bearer r1", False), ("write", None, False),
    ("metrics", None, False), ("metrics", "Bearer m1", True), ("metrics", "Bearer w1", False),
])
def test_scopes(scope, header, allowed):
    access = _access(api_read_tokens="r1,r2", api_write_tokens="w1,w2", metrics_tokens="m1")
    assert access.allows(scope, header) is allowed


def test_without_tokens_everything_is_open_and_metrics_has_its_own_switch():
    open_api = _access()
    assert not open_api.enabled
    assert all(open_api.allows(scope, None) for scope in ("public", "read", "write", "metrics"))
    only_api = _access(api_write_tokens="w1")
    assert not only_api.allows("read", None) and only_api.allows("metrics", None)


def test_plaintext_kafka_adds_nothing_and_sasl_ssl_verifies_against_the_ca(tmp_path):
    assert kafka_options(Settings()) == {"security_protocol": "PLAINTEXT"}
    from tools.stack.secure import make_certificates

    make_certificates(tmp_path)
    options = kafka_options(Settings(kafka_security_protocol="SASL_SSL", kafka_username="u", kafka_password="p",
                                     kafka_sasl_mechanism="PLAIN", kafka_ca_file=tmp_path / "ca.pem"))
    assert options["sasl_mechanism"] == "PLAIN" and options["sasl_plain_password"] == "p"
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_causes_are_named_and_chained_causes_are_read():
    cert = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    cert.verify_message = "self-signed certificate in certificate chain"
    assert describe(cert).startswith("TLS certificate not trusted (self-signed certificate")
    try:
        try:
            raise cert
        except ssl.SSLError as exc:
            raise OSError("connect failed") from exc
    except OSError as wrapped:
        assert "not trusted" in describe(wrapped)
    assert describe(ConnectionRefusedError()) == "connection refused"
    rustls = Exception("Generic S3 error: ... error: InvalidCertificate(\n UnknownIssuer,\n ) ...")
    assert describe(rustls).startswith("TLS certificate not trusted (UnknownIssuer)")
    boto = Exception("SSL validation failed for https://h/b [SSLCertVerificationError: (1, '[SSL: "
                     "CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate (_ssl")
    assert describe(boto) == ("TLS certificate not trusted (unable to get local issuer certificate); "
                              "check the CA file setting")


def test_generated_settings_tables_never_carry_a_configured_secret(monkeypatch):
    from tools import chart, docs

    secrets = {"IMGSTREAM_KAFKA_PASSWORD": "kp-1", "IMGSTREAM_API_WRITE_TOKENS": "wt-1", "IMGSTREAM_METRICS_TOKENS": "mt-1",
               "IMGSTREAM_S3_SECRET_KEY": "s3-1", "IMGSTREAM_POSTGRES_DSN": "postgresql://u:pg-1@h/db"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("IMGSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("IMGSTREAM_KAFKA_USERNAME", "u")
    Settings()  # they are configured and valid
    text = docs.settings_table() + chart.settings_block() + chart.render_schema()
    for value in ("kp-1", "wt-1", "mt-1", "s3-1", "pg-1"):
        assert value not in text
    assert set(chart.secret_settings()) >= {"kafka_password", "api_write_tokens", "api_read_tokens", "metrics_tokens"}
