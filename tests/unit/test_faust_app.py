"""The Faust runtime's app factory: settings -> app, credentials, table (no broker)."""

from __future__ import annotations

import ssl

import faust
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from driftline.streams.faust_app import (
    STATE_TABLE,
    FaustRuntime,
    broker_credentials,
    changelog_topic,
    create_app,
    faust_topic_specs,
)
from driftline.streams.settings import Settings


def test_plaintext_has_no_credentials() -> None:
    assert broker_credentials(Settings()) is None
    assert broker_credentials(Settings(security_protocol="PLAINTEXT")) is None


def test_sasl_scram_credentials_pass_through() -> None:
    s = Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                 sasl_username="svc", sasl_password=SecretStr("canary-secret"))
    c = broker_credentials(s)
    assert isinstance(c, faust.SASLCredentials)
    assert (c.username, c.password, c.mechanism.value) == ("svc", "canary-secret", "SCRAM-SHA-512")
    assert c.protocol.value == "SASL_PLAINTEXT" and c.ssl_context is None
    assert "canary-secret" not in repr(c)
    app = create_app(s.with_(bootstrap_servers="k:9093"))
    assert app.conf.broker_credentials is not None  # what Faust's clients are built with
    assert app.conf.broker_credentials.password == "canary-secret"


def test_sasl_ssl_and_ssl_carry_a_tls_context() -> None:
    c = broker_credentials(Settings(security_protocol="SASL_SSL", sasl_username="u",
                                    sasl_password=SecretStr("p")))
    assert isinstance(c, faust.SASLCredentials)
    assert c.protocol.value == "SASL_SSL" and isinstance(c.ssl_context, ssl.SSLContext)
    assert c.mechanism.value == "PLAIN"
    t = broker_credentials(Settings(security_protocol="SSL"))
    assert isinstance(t, faust.SSLCredentials) and isinstance(t.context, ssl.SSLContext)


def test_oauthbearer_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="OAUTHBEARER"):
        broker_credentials(Settings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER"))


def test_create_app_from_settings() -> None:
    s = Settings(bootstrap_servers="k1:9092,k2:9093", group_id="team-a", partitions=6,
                 inference_topic="inf")
    app = create_app(s)
    assert app.conf.id == "team-a"
    assert [str(u) for u in app.conf.broker] == ["kafka://k1:9092", "kafka://k2:9093"]
    assert app.conf.web_enabled is False
    table = app.tables[STATE_TABLE]
    assert table.partitions == 6
    topic = table.changelog_topic
    assert topic.get_topic_name() == changelog_topic(s) == f"team-a-{STATE_TABLE}-changelog"
    assert (topic.key_serializer, topic.value_serializer) == ("raw", "raw")  # never pickle
    rt = app.driftline
    assert isinstance(rt, FaustRuntime)
    assert rt.inference.get_topic_name() == "inf" and rt.inference.value_serializer == "raw"
    assert [a.name for a in app.agents.values()] == ["driftline-inference"]
    spec = {t.name: t for t in faust_topic_specs(s)}[changelog_topic(s)]
    assert spec.partitions == 6 and spec.compact
    # no module-level app: a second one is independent
    other = create_app(s.with_(group_id="team-b", faust_web_port=6067))
    assert other is not app and other.conf.id == "team-b"
    assert other.conf.web_enabled is True and other.conf.web_port == 6067


def test_runtime_installs_into_an_existing_app() -> None:
    app = faust.App("their-service", broker="kafka://k:9092", store="memory://",
                    autodiscover=False)

    @app.agent(app.topic("their-topic"))
    async def theirs(stream):  # type: ignore[no-untyped-def]
        async for _ in stream:
            pass

    rt = FaustRuntime(Settings(partitions=3), CollectorRegistry(), app=app)
    assert rt.app is app and app.driftline is rt
    assert sorted(a.name.rsplit(".", 1)[-1] for a in app.agents.values()) == [
        "driftline-inference", "theirs"]
    assert app.tables[STATE_TABLE].changelog_topic.get_topic_name() == \
        f"their-service-{STATE_TABLE}-changelog"
    names = {t.name for t in faust_topic_specs(rt.settings, app.conf.id)}
    assert f"their-service-{STATE_TABLE}-changelog" in names
