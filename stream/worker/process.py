"""Running one worker process: preflight checks, model and index, then the Faust loop."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import urlsplit

import redis

from model.base import Recommender
from model.checkpoint import load_checkpoint
from model.registry import build_recommender
from serving.faiss_index import FaissIndex
from stream.kafka.internals import Sigusr1Worker
from stream.kafka.topics import ensure_topics, worker_topics
from stream.security import KafkaSecurity, redact_url, redis_options
from stream.settings import Settings
from stream.worker import diagnostics
from stream.worker.app import Worker, create_worker

log = logging.getLogger(__name__)


class RedisUnreachable(ConnectionError):
    """Redis did not answer, or refused this client's login; the message shows the
    URL with any password masked."""

    def __init__(self, url: str, reason: str = "") -> None:
        message = f"Redis unreachable at {redact_url(url)}"
        super().__init__(f"{message}: {reason}" if reason else message)


def check_redis(url: str, timeout_s: float = 5.0, **client_options: Any) -> None:
    """Raise RedisUnreachable unless the server at `url` answers PING.

    `client_options` go to `Redis.from_url` (see stream.security.redis_options). A
    refused or missing password is named as such rather than as an unreachable host.
    """
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, **client_options
    )
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        reason = (
            "it requires a password (STREAMREC_REDIS_PASSWORD, or in STREAMREC_REDIS_URL)"
            if "password" not in client_options and urlsplit(url).password is None
            else f"login refused ({exc})"
        )
        raise RedisUnreachable(url, reason) from exc
    except (redis.RedisError, OSError, ValueError) as exc:
        # redis-py's messages name the host and the cause (refused, timeout, TLS
        # verification), never the password.
        raise RedisUnreachable(url, str(exc).splitlines()[0] if str(exc) else "") from exc
    finally:
        client.close()


def build_worker(settings: Settings) -> Worker:
    """The model and index (a bad checkpoint fails before any connection), then the
    preflight (broker, topics, Redis), then the Faust app.

    Raises CheckpointError / BrokerUnreachable / RedisUnreachable / ValueError, each with
    a one-line message.
    """
    index = FaissIndex(settings.dim)
    recommender: Recommender
    if settings.checkpoint:
        # The checkpoint names its model and version; STREAMREC_MODEL is not consulted.
        # Loading checks the file's hash before parsing it (safetensors, never pickle).
        recommender, _ = load_checkpoint(
            settings.checkpoint,
            index=index,
            dim=settings.dim,
            expected_sha256=settings.checkpoint_sha256 or None,
        )
        if len(index) >= index.exact_below:
            # Build the approximate index before taking clicks: until it exists every
            # search is exact, ~100 queries/s at 1M items.
            log.warning("building the ANN index over %d items ...", len(index))
            index.rebuild(wait=True)
    else:
        recommender = build_recommender(
            settings.model,
            dim=settings.dim,
            seed=settings.seed,
            index=index,
            half_life_s=settings.half_life_s,
        )
    ensure_topics(
        settings.bootstrap_servers,
        worker_topics(settings),
        settings.partitions,
        security=KafkaSecurity.from_settings(settings),
    )
    Path(settings.data_dir, settings.app_id).mkdir(parents=True, exist_ok=True)
    check_redis(settings.redis_url, **redis_options(settings))
    return create_worker(settings, recommender, index)


class StreamrecWorker(Sigusr1Worker):
    """Faust's worker, minus its progress spinner, with streamrec's SIGUSR1 dump."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # For the spinner Faust sets the root logger to DEBUG and spins on every
        # record, so every debug line of aiokafka and Faust was formatted into a
        # LogRecord and dropped: 7% of a worker's CPU under load (py-spy).
        self.spinner = None
        super().on_setup_root_logger(logger, level)

    async def on_sigusr1(self) -> None:  # stream/worker/diagnostics.py
        diagnostics.dump(cast(TextIO, self.stderr))


def run_worker(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; Faust's worker stops agents and commits on the way out."""
    import torch

    # One intra-op thread: the worker is one event at a time, and the broker and Redis
    # need the other core (2-core machines are the target).
    torch.set_num_threads(1)
    diagnostics.install()
    worker = build_worker(settings)
    StreamrecWorker(worker.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
