import pytest
from pydantic import ValidationError

from app.core.settings import ROLES, Settings, parse_roles


def test_roles_from_comma_separated_env(monkeypatch):
    monkeypatch.setenv("IMGSTREAM_ROLES", "extractor, classifier-fast")
    assert Settings().roles == ("extractor", "classifier-fast")


def test_all_roles_by_default_and_by_name():
    assert Settings().roles == ROLES
    assert parse_roles("all") == ROLES


def test_unknown_role_is_refused(monkeypatch):
    monkeypatch.setenv("IMGSTREAM_ROLES", "extractor,bogus")
    with pytest.raises(ValidationError, match="bogus"):
        Settings()


def test_secrets_are_masked_when_printed():
    s = Settings(s3_secret_key="very-secret", postgres_dsn="postgresql://u:pw-123@h/db",
                 api_write_tokens="tok-456,tok-457", api_read_tokens="read-1", metrics_tokens="scrape-1",
                 kafka_security_protocol="SASL_SSL", kafka_username="u", kafka_password="kafka-pw-9")
    text = repr(s) + str(s) + str(s.model_dump()) + s.model_dump_json()
    for secret in ("very-secret", "pw-123", "tok-456", "tok-457", "read-1", "scrape-1", "kafka-pw-9"):
        assert secret not in text
    assert [t.get_secret_value() for t in s.api_write_tokens] == ["tok-456", "tok-457"]


def test_tokens_are_a_comma_separated_list_and_blank_files_are_unset(monkeypatch):
    monkeypatch.setenv("IMGSTREAM_API_READ_TOKENS", " r1 , ,r2 ")
    monkeypatch.setenv("IMGSTREAM_KAFKA_CA_FILE", "")  # a chart value left blank
    s = Settings()
    assert [t.get_secret_value() for t in s.api_read_tokens] == ["r1", "r2"] and s.kafka_ca_file is None


def test_sasl_without_credentials_is_refused_at_start():
    with pytest.raises(ValidationError, match="IMGSTREAM_KAFKA_USERNAME"):
        Settings(kafka_security_protocol="SASL_SSL")


def test_every_setting_is_documented():
    undocumented = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_a_fresh_state_dir_gets_the_worker_data_dir(tmp_path):
    """Faust creates its datadir without parents; a fresh checkout has no var/faust yet."""
    from pathlib import Path

    from app.worker import create_app

    app = create_app(Settings(state_dir=tmp_path / "var", app_id="fresh", kafka_linger_s=0.005))
    assert Path(app.conf.datadir).parent.is_dir()
    assert app.conf.producer_linger == 0.005  # every produce goes through Faust's producer


def test_front_runs_no_agent_and_keeps_the_group_of_the_agents_beside_it(monkeypatch):
    every = Settings(roles="all")
    assert every.roles == ROLES and every.group_id == every.app_id
    assert Settings(roles=",".join(r for r in ROLES if r != "front")).group_id == every.app_id
    assert Settings(roles="front").group_id == f"{every.app_id}-front"
    assert Settings(roles="front,extractor").group_id == f"{every.app_id}-extractor"


@pytest.mark.parametrize(("endpoint", "mode", "signed"), [
    ("http://127.0.0.1:7070", "auto", False),
    ("http://localhost:9000", "auto", False),
    ("http://[::1]:9000", "auto", False),
    ("https://s3.amazonaws.com", "auto", False),
    ("http://minio:9000", "auto", True),
    ("http://10.0.0.7:9000", "auto", True),
    ("http://127.0.0.1:7070", "signed", True),
    ("https://s3.amazonaws.com", "signed", True),
    ("http://minio:9000", "unsigned", False),
])
def test_puts_sign_their_body_only_where_nothing_else_guards_it(endpoint, mode, signed):
    from app.storage.objectstore import signs_payload
    assert signs_payload(endpoint, mode) is signed


def test_secrets_come_from_files_named_like_their_variables_and_the_environment_wins(monkeypatch, tmp_path):
    (tmp_path / "imgstream_api_write_tokens").write_text("from-file-1,from-file-2\n")
    (tmp_path / "IMGSTREAM_KAFKA_PASSWORD").write_text("kafka-from-file\n")
    (tmp_path / "imgstream_s3_secret_key").write_text("s3-from-file")
    monkeypatch.setenv("IMGSTREAM_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("IMGSTREAM_S3_SECRET_KEY", "s3-from-env")
    monkeypatch.setenv("IMGSTREAM_POSTGRES_DSN", "")  # empty is unset: the default, or a file, applies
    s = Settings()
    assert [t.get_secret_value() for t in s.api_write_tokens] == ["from-file-1", "from-file-2"]
    assert s.kafka_password.get_secret_value() == "kafka-from-file"
    assert s.s3_secret_key.get_secret_value() == "s3-from-env"
    assert s.postgres_dsn.get_secret_value() == Settings.model_fields["postgres_dsn"].default.get_secret_value()
