"""What `streamrec dev`, the tests and the benchmarks share to drive a worker process:
start one and wait until it is ready, read a metric from its /metrics page, wait for a
count to reach a target."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stream.dev.services import ServiceError, spawn, stop
from stream.interrupts import raise_if_interrupted
from stream.settings import Settings, secret_file_variables


def start_worker(settings: Settings, log_path: Path, timeout: float = 90.0) -> Any:
    """Start `streamrec worker` as a child process; block until it reports ready."""
    # An inherited `<SECRET>_FILE` would clash with the secret's own variable, which
    # to_env always sets (from_env refuses both).
    inherited = {k: v for k, v in os.environ.items() if k not in secret_file_variables()}
    env = {**inherited, **settings.to_env()}
    process = spawn([sys.executable, "-m", "stream.cli", "worker"], log_path=log_path, env=env)
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServiceError(
                    f"worker exited with code {process.returncode}: {_last_line(log_path)}"
                )
            if scrape_metric(url, "streamrec_worker_ready") == 1.0:
                return process
            time.sleep(0.25)
            raise_if_interrupted()
        raise ServiceError(f"worker not ready after {timeout:.0f}s; see {log_path}")
    except BaseException:
        # Ctrl-C included: the caller never gets the process, so it is stopped here.
        stop(process)
        raise


def _last_line(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("\x1b")]
    return lines[-1] if lines else "(no output)"


def scrape_metric(url: str, name: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            body = response.read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_for(count: Any, expected: int, timeout_s: float, progress: bool) -> None:
    """Wait until count() reaches expected, or nothing new arrives for timeout_s."""
    bar = tqdm(
        total=expected,
        unit="rec",
        desc="recommendations",
        disable=not progress,
        leave=False,
        mininterval=0.5,
    )
    last, last_change = 0, time.monotonic()
    try:
        while True:
            current = count()
            bar.update(current - last)
            if current != last:
                last, last_change = current, time.monotonic()
            if current >= expected or time.monotonic() - last_change > timeout_s:
                return
            time.sleep(0.1)
            raise_if_interrupted()
    finally:
        bar.close()
