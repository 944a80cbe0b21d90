"""Security: Kafka credentials reach every client, secrets never leak, state never unpickles.

* Every confluent-kafka client driftline creates (worker producer and consumers, admin,
  SDK producer, alert subscriber, CLI commands) is intercepted and must receive the SASL
  (PLAIN, SCRAM-SHA-256/512, OAUTHBEARER) and SSL settings from :class:`Settings`.
  The embedded broker cannot do TLS/SASL (DESIGN §6): nothing here needs a broker.
* A canary password set in the environment never shows in settings output, ``driftline
  config``, DEBUG logs of a worker failing to reach its broker, exception messages,
  metrics, status output or alerts.
* Snapshots and references never unpickle (source scan + pickle payloads), and signed
  snapshots are verified before anything in them is parsed.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import logging
import pickle
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka import admin as confluent_admin
from prometheus_client import CollectorRegistry, generate_latest
from typer.testing import CliRunner

from driftline.detectors.errors import SnapshotError
from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.reference import build_profile
from driftline.schemas.models import EventBatch

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("detectors", "schemas", "streams", "benchmarks")

# ----------------------------------------------------------------------------- fake Kafka


class FakeCluster:
    """What the fake clients share: topics, produced records, every client's config."""

    def __init__(self) -> None:
        self.topics: dict[str, int] = {}
        self.produced: list[tuple[str, bytes | None, bytes | None]] = []
        self.clients: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()


class _Msg:
    def __init__(self, topic: str, partition: int, value: bytes | None = None,
                 key: bytes | None = None, offset: int = 0, eof: bool = False) -> None:
        self._t, self._p, self._v, self._k, self._o, self._eof = topic, partition, value, key, offset, eof

    def error(self) -> KafkaError | None:
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k

    def timestamp(self) -> tuple[int, int]:
        return (1, int(time.time() * 1000))


class _Future:
    def result(self, timeout: float | None = None) -> None:
        return None


class _Metadata:
    def __init__(self, topics: dict[str, int]) -> None:
        class T:
            def __init__(self, n: int) -> None:
                self.partitions = dict.fromkeys(range(n))
                self.error = None

        self.topics = {k: T(n) for k, n in topics.items()}
        self.cluster_id = "fake-cluster"
        self.brokers = {1: "broker-1:9093"}


def fake_clients(cluster: FakeCluster) -> dict[str, type]:
    """Producer, Consumer and AdminClient stand-ins recording their configuration."""

    class Base:
        kind = "client"

        def __init__(self, config: dict[str, Any], **kwargs: Any) -> None:
            with cluster.lock:
                cluster.clients.append((self.kind, dict(config)))
            self._assigned: list[tuple[str, int]] = []
            self._pending: list[Any] = []
            self._inbox: list[_Msg] = []

        def list_topics(self, topic: str | None = None, timeout: float = -1) -> _Metadata:
            return _Metadata(dict(cluster.topics))

        def close(self) -> None:
            return None

    class Producer(Base):
        kind = "producer"

        def produce(self, topic: str, value: bytes | None = None, key: bytes | str | None = None,
                    *args: Any, on_delivery: Any = None, **kwargs: Any) -> None:
            k = key.encode() if isinstance(key, str) else key
            with cluster.lock:
                cluster.produced.append((topic, k, value))
            if on_delivery is not None:
                self._pending.append((on_delivery, _Msg(topic, 0, value, k)))

        def poll(self, timeout: float = 0) -> int:
            done, self._pending = self._pending, []
            for cb, msg in done:
                cb(None, msg)
            return len(done)

        def flush(self, timeout: float = -1) -> int:
            self.poll()
            return 0

        def purge(self, *args: Any, **kwargs: Any) -> None:
            return None

        def __len__(self) -> int:
            return len(self._pending)

    class Consumer(Base):
        kind = "consumer"

        def subscribe(self, topics: list[str], **kwargs: Any) -> None:
            return None

        def assign(self, partitions: list[TopicPartition]) -> None:
            self._assigned = [(tp.topic, tp.partition) for tp in partitions]
            with cluster.lock:  # what was produced (all on partition 0), then the ends
                records = [_Msg(t, 0, v, k, i) for i, (t, k, v) in enumerate(cluster.produced)
                           if (t, 0) in self._assigned]
            self._inbox = records + [_Msg(t, p, eof=True) for t, p in self._assigned]

        def consume(self, num_messages: int = 1, timeout: float = -1) -> list[_Msg]:
            out, self._inbox = self._inbox[:num_messages], self._inbox[num_messages:]
            if not out and timeout and timeout > 0:
                time.sleep(min(timeout, 0.01))
            return out

        def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
            return partitions

        def commit(self, *args: Any, **kwargs: Any) -> None:
            return None

    class AdminClient(Base):
        kind = "admin"

        def create_topics(self, new: list[Any], **kwargs: Any) -> dict[str, _Future]:
            with cluster.lock:
                for t in new:
                    cluster.topics[t.topic] = t.num_partitions
            return {t.topic: _Future() for t in new}

        def delete_topics(self, names: list[str], **kwargs: Any) -> dict[str, _Future]:
            return {n: _Future() for n in names}

    return {"Producer": Producer, "Consumer": Consumer, "AdminClient": AdminClient}


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    """Replace confluent-kafka's clients everywhere driftline can reach them."""
    import sys

    import driftline.streams.admin
    import driftline.streams.cli.kafka_commands
    import driftline.streams.cli.main
    import driftline.streams.cli.run
    import driftline.streams.producer
    import driftline.streams.subscriber
    import driftline.streams.worker  # noqa: F401

    c = FakeCluster()
    fakes = fake_clients(c)
    real = {"Producer": confluent_kafka.Producer, "Consumer": confluent_kafka.Consumer,
            "AdminClient": confluent_admin.AdminClient}
    for name, fake in fakes.items():
        for mod in (confluent_kafka, confluent_admin):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, fake)
        for modname, mod in list(sys.modules.items()):
            if modname.startswith("driftline.") and getattr(mod, name, None) is real[name]:
                monkeypatch.setattr(mod, name, fake)
    return c


# ----------------------------------------------------------------------------- settings

CANARY = "canary-Zq7x9Lw2Pv"


def security_env(mechanism: str | None, protocol: str, tmp_path: Path) -> dict[str, str]:
    env = {
        "DRIFTLINE_BOOTSTRAP_SERVERS": "broker-1:9093,broker-2:9093",
        "DRIFTLINE_SECURITY_PROTOCOL": protocol,
        "DRIFTLINE_SSL_CAFILE": str(tmp_path / "ca.pem"),
        "DRIFTLINE_SSL_CERTFILE": str(tmp_path / "client.pem"),
        "DRIFTLINE_SSL_KEYFILE": str(tmp_path / "client.key"),
        "DRIFTLINE_SSL_KEY_PASSWORD": f"{CANARY}-keypass",
    }
    if mechanism is not None:
        env["DRIFTLINE_SASL_MECHANISM"] = mechanism
        if mechanism == "OAUTHBEARER":
            env["DRIFTLINE_SASL_OAUTHBEARER_CONFIG"] = f"principal=driftline scope=x {CANARY}-oauth"
        else:
            env["DRIFTLINE_SASL_USERNAME"] = "driftline-svc"
            env["DRIFTLINE_SASL_PASSWORD"] = CANARY
    return env


def expected_client_keys(env: dict[str, str]) -> dict[str, str]:
    """The librdkafka keys each client must carry for this environment."""
    keys = {
        "security.protocol": env["DRIFTLINE_SECURITY_PROTOCOL"],
        "ssl.ca.location": env["DRIFTLINE_SSL_CAFILE"],
        "ssl.certificate.location": env["DRIFTLINE_SSL_CERTFILE"],
        "ssl.key.location": env["DRIFTLINE_SSL_KEYFILE"],
        "ssl.key.password": env["DRIFTLINE_SSL_KEY_PASSWORD"],
        "bootstrap.servers": env["DRIFTLINE_BOOTSTRAP_SERVERS"],
    }
    if "DRIFTLINE_SASL_MECHANISM" in env:
        keys["sasl.mechanism"] = env["DRIFTLINE_SASL_MECHANISM"]
    for var, key in (("DRIFTLINE_SASL_USERNAME", "sasl.username"),
                     ("DRIFTLINE_SASL_PASSWORD", "sasl.password"),
                     ("DRIFTLINE_SASL_OAUTHBEARER_CONFIG", "sasl.oauthbearer.config")):
        if var in env:
            keys[key] = env[var]
    return keys


SECURITY_CASES = [
    pytest.param("PLAIN", "SASL_SSL", id="sasl-plain"),
    pytest.param("SCRAM-SHA-256", "SASL_SSL", id="scram-sha-256"),
    pytest.param("SCRAM-SHA-512", "SASL_PLAINTEXT", id="scram-sha-512-plaintext"),
    pytest.param("OAUTHBEARER", "SASL_SSL", id="oauthbearer"),
    pytest.param(None, "SSL", id="mtls"),
]


@pytest.fixture
def env_of(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    def apply(mechanism: str | None, protocol: str) -> dict[str, str]:
        import os

        for k in [k for k in os.environ if k.lower().startswith("driftline_")]:
            monkeypatch.delenv(k)
        env = security_env(mechanism, protocol, tmp_path)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return env

    return apply


def _check_clients(cluster: FakeCluster, env: dict[str, str], what: str, kinds: set[str]) -> None:
    want = expected_client_keys(env)
    assert cluster.clients, f"{what}: no Kafka client was created"
    seen = {kind for kind, _ in cluster.clients}
    assert kinds <= seen, f"{what}: expected {sorted(kinds)} clients, saw {sorted(seen)}"
    for kind, conf in cluster.clients:
        missing = {k: v for k, v in want.items() if conf.get(k) != v}
        assert not missing, f"{what}: a {kind} client lacks {sorted(missing)}"
        # nothing left over from another mechanism
        if "sasl.mechanism" not in want:
            assert not any(k.startswith("sasl.") for k in conf), f"{what}: {kind} has sasl.*"


# ----------------------------------------------------------------------------- pass-through


@pytest.mark.parametrize("mechanism, protocol", SECURITY_CASES)
def test_worker_clients_get_the_security_settings(
        cluster: FakeCluster, env_of: Any, mechanism: str | None, protocol: str) -> None:
    from driftline.streams.settings import Settings
    from driftline.streams.worker import Worker

    env = env_of(mechanism, protocol)
    w = Worker(Settings(), CollectorRegistry())
    w.run(duration=0.2)  # admin (topics), references consumer, group consumer, producer
    _check_clients(cluster, env, "worker", {"producer", "consumer", "admin"})
    assert sum(1 for k, _ in cluster.clients if k == "consumer") >= 2


@pytest.mark.parametrize("mechanism, protocol", SECURITY_CASES)
def test_sdk_producer_and_subscriber_get_the_security_settings(
        cluster: FakeCluster, env_of: Any, mechanism: str | None, protocol: str) -> None:
    from driftline.streams.producer import DriftlineProducer
    from driftline.streams.settings import Settings
    from driftline.streams.subscriber import AlertSubscriber

    env = env_of(mechanism, protocol)
    s = Settings()
    with DriftlineProducer(s.kafka(), s.inference_topic) as p:
        p.emit("m", {"x": 1.0})
        assert p.flush(5) == 0
    cluster.topics[s.alerts_topic] = 2
    assert list(AlertSubscriber(s.kafka(), s.alerts_topic, timeout=5)) == []
    AlertSubscriber(s.kafka(), s.alerts_topic, group_id="g").close()  # group form: subscribes
    _check_clients(cluster, env, "SDK", {"producer", "consumer", "admin"})


def test_sdk_client_options_form_gets_the_security_settings(
        cluster: FakeCluster, env_of: Any) -> None:
    """The bootstrap-string form: ``client_options`` go through client_config()."""
    from driftline.streams.producer import DriftlineProducer
    from driftline.streams.subscriber import AlertSubscriber

    env = env_of("SCRAM-SHA-512", "SASL_SSL")
    options = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
               "sasl_username": env["DRIFTLINE_SASL_USERNAME"],
               "sasl_password": env["DRIFTLINE_SASL_PASSWORD"],
               "ssl_cafile": env["DRIFTLINE_SSL_CAFILE"], "ssl_certfile": env["DRIFTLINE_SSL_CERTFILE"],
               "ssl_keyfile": env["DRIFTLINE_SSL_KEYFILE"],
               "ssl_key_password": env["DRIFTLINE_SSL_KEY_PASSWORD"]}
    with DriftlineProducer(env["DRIFTLINE_BOOTSTRAP_SERVERS"], client_options=options):
        pass
    cluster.topics["driftline.alerts"] = 1
    list(AlertSubscriber(env["DRIFTLINE_BOOTSTRAP_SERVERS"], timeout=5, client_options=options))
    _check_clients(cluster, env, "SDK (client_options)", {"producer", "consumer", "admin"})


def _cli(args: list[str]) -> Any:
    from driftline.streams.cli.main import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


@pytest.mark.parametrize("mechanism, protocol", SECURITY_CASES)
def test_cli_commands_get_the_security_settings(
        cluster: FakeCluster, env_of: Any, mechanism: str | None, protocol: str,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from driftline.streams.settings import Settings

    env = env_of(mechanism, protocol)
    s = Settings()
    monkeypatch.setattr(signal, "signal", lambda *a, **k: None)  # keep the runner's handlers
    prof = build_profile("m", {"x": np.arange(200.0)}, created_at=1.0)
    ref_file = tmp_path / "ref.json"
    ref_file.write_bytes(prof.to_json())
    runs = {
        "produce": ["produce", "--models", "1", "--events", "5", "--rate", "0"],
        "produce --single": ["produce", "--models", "1", "--events", "5", "--rate", "0", "--single"],
        "alerts": ["alerts"],
        "status": ["status", "--json"],
        "reference set": ["reference", "set", "--model", "m", "--file", str(ref_file)],
        "reference show": ["reference", "show", "--model", "m"],
        "worker": ["worker", "--duration", "0.2", "--metrics-port", "0"],
    }
    for what, args in runs.items():
        cluster.clients.clear()
        cluster.topics.setdefault(s.alerts_topic, 1)
        res = _cli(args)
        assert res.exit_code == 0, f"{what}: {res.output}"
        _check_clients(cluster, env, f"driftline {what}", set())


def test_admin_helpers_pass_the_security_settings_through(cluster: FakeCluster, env_of: Any) -> None:
    from driftline.streams import admin
    from driftline.streams.settings import Settings

    env = env_of("PLAIN", "SASL_SSL")
    conf = Settings().kafka()
    admin.ensure_topics(conf, [admin.TopicSpec("t", 2)])
    assert admin.partition_count(conf, "t") == 2
    assert admin.read_compacted(conf, "t", timeout=5) == {}
    admin.delete_topics(conf, ["t"])
    _check_clients(cluster, env, "admin helpers", {"admin", "consumer"})


def test_no_other_kafka_client_library_is_used() -> None:
    """Only confluent-kafka clients exist in the package (the interception above covers
    them all): no kafka-python, aiokafka or Faust client is constructed anywhere."""
    offenders = []
    for path in _package_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(n.split(".")[0] in ("kafka", "aiokafka", "faust") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    # benchmark baselines compare against these libraries; they are not driftline clients
    offenders = [o for o in offenders if not o.startswith("benchmarks/")]
    assert not offenders, offenders


# ----------------------------------------------------------------------------- canary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_no_canary(text: str, where: str) -> None:
    assert CANARY not in text, f"the canary secret appears in {where}: ...{_around(text)}..."


def _around(text: str) -> str:
    i = text.find(CANARY)
    return text[max(i - 80, 0): i + 40]


def test_settings_never_show_secrets(env_of: Any) -> None:
    from driftline.streams.kafka_config import redacted
    from driftline.streams.settings import Settings

    env_of("PLAIN", "SASL_SSL")
    s = Settings(snapshot_key=f"{CANARY}-hmac")
    for text, where in ((repr(s), "repr"), (str(s), "str"), (str(s.model_dump()), "model_dump"),
                        (s.model_dump_json(), "model_dump_json"),
                        (str(s.model_dump(mode="json")), "model_dump(json)"),
                        (str(redacted(s.kafka())), "redacted(kafka())"),
                        (repr(s.with_(group_id="x")), "with_()")):
        _assert_no_canary(text, where)
    assert CANARY in s.kafka()["sasl.password"]  # the clients do get it


def test_cli_config_redacts_secrets(env_of: Any) -> None:
    env = env_of("PLAIN", "SASL_SSL")
    res = _cli(["config"])
    assert res.exit_code == 0
    _assert_no_canary(res.output, "driftline config")
    data = orjson.loads(res.output)
    assert data["kafka"]["sasl.username"] == env["DRIFTLINE_SASL_USERNAME"]
    assert data["kafka"]["sasl.password"] == "***"


@pytest.fixture
def librdkafka_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real clients with librdkafka's own debug output on (it logs its configuration)."""
    import sys

    real = {"Producer": confluent_kafka.Producer, "Consumer": confluent_kafka.Consumer,
            "AdminClient": confluent_admin.AdminClient}

    def verbose(cls: type) -> Any:
        def make(config: dict[str, Any], **kwargs: Any) -> Any:
            return cls({**config, "debug": "generic,broker,security,conf"}, **kwargs)
        return make

    for name, cls in real.items():
        for modname, mod in list(sys.modules.items()):
            if modname.startswith("driftline.") and getattr(mod, name, None) is cls:
                monkeypatch.setattr(mod, name, verbose(cls))


def test_canary_password_never_leaks(
        env_of: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        librdkafka_debug: None) -> None:
    """A worker start attempt against an unreachable broker, logs at DEBUG (librdkafka's
    debug output included), its exception, its metrics, its status records, a real alert,
    and the status command's output: no canary anywhere."""
    import functools
    import traceback

    import driftline.streams.worker as worker_mod
    from driftline.schemas.codecs import encode_alert
    from driftline.streams.admin import ensure_topics
    from driftline.streams.settings import Settings

    env_of("PLAIN", "SASL_PLAINTEXT")
    monkeypatch.setenv("DRIFTLINE_BOOTSTRAP_SERVERS", f"127.0.0.1:{_free_port()}")
    monkeypatch.setenv("DRIFTLINE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("DRIFTLINE_SNAPSHOT_KEY", f"{CANARY}-hmac")
    monkeypatch.setattr(worker_mod, "ensure_topics", functools.partial(ensure_topics, timeout=3))
    caplog.set_level(logging.DEBUG)
    root = logging.getLogger("driftline")  # earlier CLI runs may have configured it
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "propagate", True)
    monkeypatch.setattr(root, "level", logging.DEBUG)
    s = Settings()
    registry = CollectorRegistry()
    w = worker_mod.Worker(s, registry)
    with pytest.raises(Exception) as info:  # any failure to reach the broker
        w.run(duration=10)
    exc_text = "".join(traceback.format_exception(info.value)) + repr(info.value)
    # librdkafka hands its log lines to the Python logger when a client is polled
    w._producer.flush(1)
    admin = getattr(w, "_admin", None)
    if admin is not None and hasattr(admin, "poll"):
        admin.poll(0.5)
    _assert_no_canary(exc_text, "the worker's exception")
    assert caplog.records, f"no log output captured ({info.value!r})"
    logs = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records)
    assert "sasl.password" in logs, "librdkafka's configuration dump was not captured"
    _assert_no_canary(logs, "the DEBUG logs")

    # the same worker, fed events until it alerts: metrics, status records, alerts
    from driftline.streams.processor import Incoming

    w.processor.config = MonitorConfig(panes=2, pane_size=100, min_samples=100,
                                       calibration_rounds=20)
    w.processor.auto_reference_events = 200
    rng = np.random.default_rng(0)
    msgs = [Incoming(s.inference_topic, 0, i, orjson.dumps(
        {"model": "m", "features": {"x": float(rng.normal() + (3.0 if i >= 400 else 0.0))},
         "latency_ms": 3.0, "segment": {"region": "eu"}})) for i in range(800)]
    out = w.processor.process(msgs)
    assert out.alerts, "expected the injected drift to alert"
    _assert_no_canary(b"".join(encode_alert(a) for a in out.alerts).decode(), "alerts")
    _assert_no_canary(generate_latest(registry).decode(), "metrics")
    rows = [w.status_of(st) for st in w.processor.models.values()]
    _assert_no_canary(orjson.dumps(rows).decode(), "status records")
    blob = next(iter(w.processor.models.values())).snapshot(key=w._key)
    assert CANARY.encode() not in blob

    import driftline.streams.cli.kafka_commands as kc

    records = {st.model.encode(): orjson.dumps(r) for st, r in zip(
        w.processor.models.values(), rows, strict=True)}
    monkeypatch.setattr(kc, "read_compacted", lambda *a, **k: records)
    monkeypatch.setattr(kc, "partition_count", lambda *a, **k: None)
    for args in (["status"], ["status", "--json"], ["config"]):
        res = _cli(args)
        assert res.exit_code == 0, res.output
        _assert_no_canary(res.output, f"driftline {' '.join(args)}")


# ----------------------------------------------------------------------------- never unpickle


def _package_files() -> Iterator[Path]:
    for d in PACKAGE_DIRS:
        yield from (p for p in (ROOT / d).rglob("*.py") if "results" not in p.parts)


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def test_no_code_path_can_unpickle_or_eval() -> None:
    """Source scan: no pickle-family import, np.load only with allow_pickle=False, yaml only
    safe_load, no eval/exec."""
    banned_modules = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve",
                      "jsonpickle"}
    problems: list[str] = []
    for path in _package_files():
        rel = path.relative_to(ROOT)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(n.split(".")[0] in banned_modules for n in names):
                    problems.append(f"{rel}:{node.lineno} imports {names}")
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            kw = {k.arg: k.value for k in node.keywords}
            if name.split(".")[-1] in ("eval", "exec") and "." not in name:
                problems.append(f"{rel}:{node.lineno} calls {name}")
            if name in ("np.load", "numpy.load"):
                ap = kw.get("allow_pickle")
                if not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(f"{rel}:{node.lineno} np.load without allow_pickle=False")
            if name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(f"{rel}:{node.lineno} {name} (use yaml.safe_load)")
            if name.endswith(("read_pickle", "pd.read_pickle")) or name == "torch.load":
                problems.append(f"{rel}:{node.lineno} {name}")
    assert not problems, problems


class _Boom:
    """Unpickling this creates a marker file: proof that something unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def test_pickle_payloads_are_refused_everywhere(tmp_path: Path) -> None:
    from driftline.detectors.errors import DriftlineError
    from driftline.detectors.reference import ReferenceProfile
    from driftline.detectors.serialization import MAGIC, unpack
    from driftline.detectors.tables import read_table
    from driftline.streams.model_state import ModelState

    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Boom(marker), protocol=pickle.HIGHEST_PROTOCOL)
    assert not marker.exists()
    ref = build_profile("m", {"x": np.arange(300.0)}, created_at=1.0)
    cfg = MonitorConfig(panes=2, pane_size=20, min_samples=20, calibration_rounds=10)
    # a snapshot-shaped blob whose array is a pickle, declared with an object dtype
    header = orjson.dumps({"kind": "driftline.monitor", "version": 1, "meta": {},
                           "arrays": {"a": {"dtype": "|O", "shape": [1], "offset": 0,
                                            "n": len(payload)}}})
    disguised = MAGIC + len(header).to_bytes(4, "big") + header + payload
    for blob in (payload, disguised, b"DLH1" + payload + bytes(32)):
        for load in (lambda b: unpack(b, "driftline.monitor"),
                     lambda b: ModelMonitor(ref, cfg).restore(b),
                     lambda b: ModelState.restore(b, ref, cfg),
                     lambda b: ReferenceProfile.from_json(b)):
            with pytest.raises(DriftlineError):
                load(blob)
    npz = tmp_path / "evil.npz"
    np.savez(npz, x=np.array([_Boom(marker)], dtype=object), y=np.arange(1.0))
    with pytest.raises(DriftlineError, match="object arrays"):
        read_table(npz)
    (tmp_path / "evil.npy").write_bytes(payload)
    with pytest.raises(Exception):  # noqa: B017 - not a supported table at all
        read_table(tmp_path / "evil.npy")
    assert not marker.exists(), "a pickle payload was unpickled"


# ----------------------------------------------------------------------------- HMAC


def _monitor() -> tuple[ModelMonitor, Any]:
    ref = build_profile("m", {"x": np.random.default_rng(0).normal(size=400),
                              "c": ["a", "b"] * 200}, created_at=1.0)
    cfg = MonitorConfig(panes=2, pane_size=20, min_samples=20, calibration_rounds=10)
    mon = ModelMonitor(ref, cfg)
    n = 45
    mon.update(EventBatch(
        model="m", feature_names=("x",), numeric=np.random.default_rng(1).normal(size=(n, 1)),
        text=None, ts=np.arange(n, dtype=float), prediction_score=np.full(n, np.nan),
        prediction_label=None, event_id=np.full(n, None, object),
        model_version=np.full(n, None, object), segment=np.full(n, None, object),
        latency_ms=np.full(n, np.nan), partition=np.zeros(n, np.int64),
        offset=np.arange(n, dtype=np.int64)))
    return mon, ref


def test_signed_monitor_snapshot_round_trips_and_rejects_tampering() -> None:
    mon, ref = _monitor()
    key = b"k" * 32
    signed = mon.snapshot(key=key)
    assert signed.startswith(b"DLH1")
    fresh, _ = ModelMonitor.from_snapshot(ref, signed, key=key)
    assert fresh.snapshot() == mon.snapshot()
    target = ModelMonitor(ref, mon.config)
    before = target.snapshot()
    rng = random.Random(0)
    positions = sorted({*range(0, 64), *rng.sample(range(len(signed)), 200), len(signed) - 1})
    for i in positions:  # every header byte, a sample of the body, the tag
        bad = bytearray(signed)
        bad[i] ^= 0x01
        with pytest.raises(SnapshotError):
            target.restore(bytes(bad), key=key)
    for bad in (signed[:-1], signed + b"\0", signed[:40], b"DLH1" + signed[4:-32] + bytes(32)):
        with pytest.raises(SnapshotError):
            target.restore(bad, key=key)
    assert target.snapshot() == before, "a rejected snapshot changed the monitor"
    with pytest.raises(SnapshotError, match="does not verify"):
        target.restore(signed, key=b"another key")
    with pytest.raises(SnapshotError, match="no key"):
        target.restore(signed)
    with pytest.raises(SnapshotError, match="not signed"):  # no downgrade to unsigned
        target.restore(mon.snapshot(), key=key)


def test_signature_is_verified_before_anything_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forged blob (malicious header, wrong key) fails on the tag, never in the parser."""
    import driftline.detectors.serialization as ser

    parsed: list[bytes] = []
    real_loads = ser.orjson.loads

    class Spy:
        JSONDecodeError = orjson.JSONDecodeError

        @staticmethod
        def loads(b: Any) -> Any:
            parsed.append(bytes(b))
            return real_loads(b)

        dumps = staticmethod(orjson.dumps)

    header = b'{"kind":"driftline.monitor","version":1,"meta":{},"arrays":{"a":{"dtype":"<f8",' \
             b'"shape":[1180591620717411303424],"offset":0,"n":8}}}'
    body = ser.MAGIC + len(header).to_bytes(4, "big") + header + bytes(8)
    forged = b"DLH1" + body + hmac.new(b"attacker", body, hashlib.sha256).digest()
    monkeypatch.setattr(ser, "orjson", Spy)
    with pytest.raises(SnapshotError, match="does not verify"):
        ser.unpack(forged, "driftline.monitor", key=b"the real key")
    assert parsed == [], "the header was parsed before the signature was checked"


def test_signed_model_state_and_the_worker_uses_settings_snapshot_key(
        cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from driftline.streams.model_state import ModelState
    from driftline.streams.processor import Incoming
    from driftline.streams.settings import Settings
    from driftline.streams.worker import Worker

    monkeypatch.setenv("DRIFTLINE_SNAPSHOT_KEY", "state-signing-key")
    s = Settings(auto_reference_events=100)
    w = Worker(s, CollectorRegistry())
    assert w.processor.snapshot_key == b"state-signing-key"
    w.processor.process([Incoming(s.inference_topic, 0, i, orjson.dumps(
        {"model": "m", "features": {"x": float(i)}})) for i in range(150)])
    w.checkpoint()
    states = [v for t, _, v in cluster.produced if t == s.state_topic]
    assert states and all(v is not None and v.startswith(b"DLH1") for v in states)
    cfg = s.monitor_config()
    st = ModelState.restore(states[-1], w.processor.references.get("m"), cfg,
                            key=b"state-signing-key")
    assert st.events_applied == 150
    with pytest.raises(SnapshotError):
        ModelState.restore(states[-1], None, cfg)  # signed, no key
    tampered = bytearray(states[-1])
    tampered[30] ^= 1
    with pytest.raises(SnapshotError):
        ModelState.restore(bytes(tampered), None, cfg, key=b"state-signing-key")

    # a tampered or unsigned snapshot on the state topic is not loaded: the model starts fresh
    from driftline.streams.model_state import state_key

    for bad in (bytes(tampered), ModelState("m", 0, events_applied=10**6).snapshot()):
        w.processor.models.clear()
        w.processor.snapshot_loader = {state_key("m", 0): bad}.get
        w.processor.process([Incoming(s.inference_topic, 0, 10_000, orjson.dumps(
            {"model": "m", "features": {"x": 1.0}}))])
        assert w.processor.models[state_key("m", 0)].events_applied == 1


def test_worker_ignores_unsigned_references_when_a_key_is_set(
        cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """References used to be loaded unsigned whatever DRIFTLINE_SNAPSHOT_KEY said."""
    from driftline.streams.settings import Settings
    from driftline.streams.worker import Worker

    monkeypatch.setenv("DRIFTLINE_SNAPSHOT_KEY", "signing-key")
    s = Settings()
    forged = build_profile("m", {"x": np.arange(500.0)}, created_at=1.0)
    w = Worker(s, CollectorRegistry())
    w._start_references()
    assert w._refs is not None
    w._refs._inbox = [_Msg(s.references_topic, 0, forged.to_json(), b"m")]
    w._poll_references(0)
    assert "m" not in w.processor.references


# ----------------------------------------------------------------------------- rendering


def test_cli_output_survives_markup_in_model_and_feature_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """status/alerts used to render data-derived names as Rich markup ('[/]' raised MarkupError)."""
    import driftline.streams.cli.kafka_commands as kc
    from driftline.schemas.models import DriftAlert, FeatureScore, WindowInfo

    hostile = "[/]"
    row = {"model": hostile, "partition": 0, "events_applied": 1, "events_deadlettered": 0,
           "offsets": {}, "reference": "[bold]x", "alerts_firing": 0, "owner": "[/owner]"}
    monkeypatch.setattr(kc, "read_compacted", lambda *a, **k: {b"k": orjson.dumps(row)})
    monkeypatch.setattr(kc, "partition_count", lambda *a, **k: None)
    res = _cli(["status"])
    assert res.exit_code == 0 and hostile in res.output
    alert = DriftAlert("id", hostile, "data", "firing", "pane_chi2", "chi2", 9.0, 1.0,
                       WindowInfo(None, None, 10), feature="[/x]",
                       top_features=(FeatureScore("[/y]", "chi2", 9.0, 1.0),))

    class Sub:
        def __init__(self, *a: Any, **k: Any) -> None:
            pass

        def __iter__(self) -> Iterator[DriftAlert]:
            return iter([alert])

        def close(self) -> None:
            return None

    monkeypatch.setattr(kc, "AlertSubscriber", Sub)
    monkeypatch.setattr(kc.signal, "signal", lambda *a, **k: None)
    res = _cli(["alerts"])
    assert res.exit_code == 0 and "[/x]" in res.output


@pytest.mark.parametrize("record", [b"not json", b"[]", b'{"no_model": 1}',
                                    b'{"model": "m", "events_applied": "many"}',
                                    b'{"model": "ok", "partition": null}',
                                    b'{"model": "ok", "updated_at": "soon"}',
                                    b'{"model": "ok", "owner": ["w"]}'])
def test_status_skips_records_it_cannot_read(monkeypatch: pytest.MonkeyPatch, record: bytes) -> None:
    """collect_status used to crash on a status record that is not one a worker writes."""
    import driftline.streams.cli.kafka_commands as kc
    from driftline.streams.settings import Settings

    good = orjson.dumps({"model": "ok", "partition": 0, "events_applied": 3,
                         "events_deadlettered": 0, "offsets": {}, "owner": "w"})
    monkeypatch.setattr(kc, "read_compacted", lambda *a, **k: {b"a": record, b"b": good})
    monkeypatch.setattr(kc, "partition_count", lambda *a, **k: None)
    data = kc.collect_status(Settings())
    assert [m["model"] for m in data["models"]] == ["ok"]
    assert data["models"][0]["events_applied"] == 3 and data["models"][0]["owner"] == "w"


def test_status_output_shows_control_characters_as_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names from the topics cannot send terminal escape sequences; sums stay writable."""
    import driftline.streams.cli.kafka_commands as kc

    big = 2**63 - 1
    rows = {b"%d" % p: orjson.dumps({"model": "m\x1b[2J", "partition": p, "events_applied": big,
                                     "events_deadlettered": big, "owner": "w\x07"})
            for p in range(3)}
    monkeypatch.setattr(kc, "read_compacted", lambda *a, **k: rows)
    monkeypatch.setattr(kc, "partition_count", lambda *a, **k: None)
    res = _cli(["status"])
    assert res.exit_code == 0 and "\x1b" not in res.output and "\x07" not in res.output
    assert "m\\x1b[2J" in res.output
    res = _cli(["status", "--json"])
    data = orjson.loads(res.output)
    assert data["models"][0]["events_applied"] == big and data["deadletter_total"] == big
    assert data["models"][0]["model"] == "m\x1b[2J"
