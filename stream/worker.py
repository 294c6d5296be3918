"""Running one worker process: preflight checks, model and index, then the Faust loop."""

from __future__ import annotations

from pathlib import Path

import redis

from model.registry import build_recommender
from serving.faiss_index import FaissIndex
from stream.app import Worker, create_worker
from stream.pipeline import TimedIndex
from stream.settings import Settings
from stream.topics import ensure_topics


class RedisUnreachable(ConnectionError):
    def __init__(self, url: str) -> None:
        super().__init__(f"Redis unreachable at {url}")


def check_redis(url: str, timeout_s: float = 5.0) -> None:
    """Raise RedisUnreachable unless the server at `url` answers PING."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise RedisUnreachable(url) from exc
    finally:
        client.close()


def build_worker(settings: Settings) -> Worker:
    """Preflight (broker, topics, Redis), then the model, the index and the Faust app.

    Raises BrokerUnreachable / RedisUnreachable / ValueError with a one-line message.
    """
    ensure_topics(settings.bootstrap_servers, settings.topics(), settings.partitions)
    Path(settings.data_dir, settings.app_id).mkdir(parents=True, exist_ok=True)
    check_redis(settings.redis_url)
    index = FaissIndex(settings.dim)
    timed_index = TimedIndex(index)
    recommender = build_recommender(
        settings.model, dim=settings.dim, seed=settings.seed, index=timed_index
    )
    return create_worker(settings, recommender, index, timed_index)


def run_worker(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; Faust's worker stops agents and commits on the way out."""
    import faust
    import torch

    # One intra-op thread: the worker is one event at a time, and the broker and Redis
    # need the other core (2-core machines are the target).
    torch.set_num_threads(1)
    worker = build_worker(settings)
    faust.Worker(worker.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
