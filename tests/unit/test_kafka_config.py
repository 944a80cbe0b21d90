"""kafka_config: only given keys, SASL/SSL pass-through, defaults, redaction."""

from __future__ import annotations

import pytest

from driftline.streams.kafka_config import (
    client_config,
    consumer_config,
    kafka_python_config,
    producer_config,
    redacted,
)


class _Secret:
    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value


def test_plain_config_has_only_bootstrap():
    assert client_config(" 127.0.0.1:9092 ") == {"bootstrap.servers": "127.0.0.1:9092"}


def test_sasl_ssl_pass_through():
    cfg = client_config(
        "b1:9093,b2:9093",
        security_protocol="sasl_ssl",
        sasl_mechanism="scram-sha-512",
        sasl_username="alice",
        sasl_password=_Secret("s3cret"),
        ssl_cafile="/ca.pem",
        ssl_certfile="/cert.pem",
        ssl_keyfile="/key.pem",
        ssl_key_password="kp",
        extra={"client.id": "x", "enable.ssl.certificate.verification": False},  # type: ignore[dict-item]
    )
    assert cfg == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/cert.pem",
        "ssl.key.location": "/key.pem",
        "ssl.key.password": "kp",
        "client.id": "x",
        "enable.ssl.certificate.verification": "false",
    }


def test_oauthbearer_config_passes_through():
    cfg = client_config("b:9092", security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                        sasl_oauthbearer_config="principal=me")
    assert cfg["sasl.oauthbearer.config"] == "principal=me"


@pytest.mark.parametrize("kwargs", [{"security_protocol": "TLS"}, {"sasl_mechanism": "MD5"}])
def test_unknown_protocol_or_mechanism_rejected(kwargs):
    with pytest.raises(ValueError):
        client_config("b:9092", **kwargs)
    with pytest.raises(ValueError):
        kafka_python_config("b:9092", **kwargs)


def test_empty_bootstrap_rejected():
    with pytest.raises(ValueError):
        client_config("  ")


def test_consumer_and_producer_defaults_and_overrides():
    base = client_config("b:9092", sasl_username="u")
    c = consumer_config(base, "grp", **{"session.timeout.ms": 10000})
    assert c["group.id"] == "grp"
    assert c["sasl.username"] == "u"
    assert c["enable.auto.commit"] is False
    assert c["auto.offset.reset"] == "earliest"
    assert c["fetch.queue.backoff.ms"] == 10
    assert c["session.timeout.ms"] == 10000
    with pytest.raises(ValueError):
        consumer_config(base, "")
    p = producer_config(base, **{"linger.ms": 50})
    assert p["linger.ms"] == 50
    assert p["acks"] == "all"
    assert p["enable.idempotence"] is True
    assert p["compression.type"] == "none"
    assert "group.id" not in p


def test_kafka_python_mapping():
    cfg = kafka_python_config(
        "b1:9093, b2:9093",
        security_protocol="sasl_plaintext",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=_Secret("pw"),
        ssl_key_password="kp",
        extra={"client_id": "c"},
    )
    assert cfg == {
        "bootstrap_servers": ["b1:9093", "b2:9093"],
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "pw",
        "ssl_password": "kp",
        "client_id": "c",
    }


def test_redacted_masks_secrets_only():
    cfg = client_config("b:9092", sasl_username="u", sasl_password="pw", ssl_key_password="kp",
                        sasl_oauthbearer_config="x=y",
                        extra={"sasl.oauthbearer.client.secret": "cs", "client.id": "c"})
    red = redacted(cfg)
    assert red["sasl.password"] == "***"
    assert red["ssl.key.password"] == "***"
    assert red["sasl.oauthbearer.config"] == "***"
    assert red["sasl.oauthbearer.client.secret"] == "***"
    assert red["sasl.username"] == "u"
    assert red["client.id"] == "c"
    assert "pw" not in repr(red) and "kp" not in repr(red)
    assert cfg["sasl.password"] == "pw"  # the original is untouched
    kp = redacted(kafka_python_config("b:9092", sasl_password="pw", ssl_key_password="kp"))
    assert kp["sasl_plain_password"] == "***" and kp["ssl_password"] == "***"
