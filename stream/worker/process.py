"""Running one worker process: preflight checks, model and index, then the Faust loop."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import TextIO, cast

from model.base import MODEL_NAMES, Recommender
from model.checkpoint import load_checkpoint
from model.registry import build_recommender
from model.variants import Arm, parse_variants, variant_name, variants
from serving.faiss_index import FaissIndex
from stream.kafka.internals import Sigusr1Worker
from stream.kafka.topics import ensure_topics, worker_topics
from stream.preflight import check_services
from stream.security import KafkaSecurity
from stream.settings import Settings
from stream.worker import diagnostics
from stream.worker.app import Worker, create_worker

log = logging.getLogger(__name__)


def build_worker(settings: Settings) -> Worker:
    """The model and index (a bad checkpoint fails before any connection), then the
    preflight (broker, topics, Redis), then the Faust app.

    Raises CheckpointError / BrokerUnreachable / RedisUnreachable / ValueError, each with
    a one-line message; the services within STREAMREC_CONNECT_TIMEOUT_S each.
    """
    recommender, index = build_model(settings)
    check_services(settings)  # again, if the CLI did: milliseconds when both answer
    ensure_topics(
        settings.bootstrap_servers,
        worker_topics(settings),
        settings.partitions,
        security=KafkaSecurity.from_settings(settings),
    )
    Path(settings.data_dir, settings.app_id).mkdir(parents=True, exist_ok=True)
    return create_worker(settings, recommender, index)


def build_model(settings: Settings) -> tuple[Recommender, FaissIndex]:
    """The worker's model and the FAISS index it searches: STREAMREC_VARIANTS' arms,
    else STREAMREC_CHECKPOINT's model, else a fresh STREAMREC_MODEL. Under variants each
    arm has an index of its own and the worker shares the primary arm's
    (model/variants.py). CheckpointError for a bad checkpoint."""
    if not settings.variants:
        return _build_arm(settings, settings.checkpoint or settings.model)
    arms, indexes = [], []
    for what, weight in parse_variants(settings.variants):
        model, index = _build_arm(settings, what)
        arms.append(Arm(variant_name(what), model, weight))
        indexes.append(index)
    experiment = variants(arms, salt=settings.experiment)
    return experiment, indexes[experiment.primary]


def _build_arm(settings: Settings, what: str) -> tuple[Recommender, FaissIndex]:
    """A fresh model named `what`, or the checkpoint file `what`, over its own index."""
    index = FaissIndex(settings.dim)
    if what in MODEL_NAMES:
        model = build_recommender(
            what,
            dim=settings.dim,
            seed=settings.seed,
            index=index,
            half_life_s=settings.half_life_s,
            session_gap_s=settings.session_gap_s,
        )
        return model, index
    # The checkpoint names its model and version; STREAMREC_MODEL is not consulted.
    # Loading checks the file's hash before parsing it (safetensors, never pickle).
    model, _ = load_checkpoint(
        what,
        index=index,
        dim=settings.dim,
        expected_sha256=(settings.checkpoint_sha256 or None)
        if what == settings.checkpoint
        else None,
    )
    if len(index) >= index.exact_below:
        # Build the approximate index before taking clicks: until it exists every
        # search is exact, ~100 queries/s at 1M items.
        log.warning("building the ANN index over %d items ...", len(index))
        index.rebuild(wait=True)
    return model, index


#: Net tracked allocations between two young collections once the worker runs.
YOUNG_COLLECTION_THRESHOLD = 50_000


def freeze_startup_heap() -> None:
    """Take every object alive now out of the cyclic collector's sight for good.

    Imports, the model, the index and the Faust app live as long as the process, yet
    each full collection walked all of them (a few hundred thousand objects) on the
    event-loop thread: a pause of about a tenth of a second, several times a minute
    under load, and a fifth of the model step's CPU. Frozen, they are never scanned;
    what the worker allocates later is collected as usual. Call once startup is done.

    It also makes young collections rarer: each batch allocates tens of thousands of
    short-lived tracked objects (contexts, updates, lists), nearly all freed by their
    reference counts, and at the default threshold (700) the collector still ran a
    young pass every few hundred of them. At `YOUNG_COLLECTION_THRESHOLD` a pass scans
    at most that many objects: about a millisecond even when all of them survive.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


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
    freeze_startup_heap()
    StreamrecWorker(worker.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
