"""Checkpoints swapped live: `streamrec model load` / `streamrec model rollback`.

The command goes on the admin topic (`<app_id>-admin`, compacted), not into a file each
worker watches: one record reaches every worker of the app at once, wherever they run,
in one order, and stays there for a worker that starts later (it serves its own
STREAMREC_CHECKPOINT or fresh model first, then loads what the topic asks for). Each
record holds the whole wanted state: the stack of checkpoints loaded, newest last (an
empty stack is the workers' startup model), so the topic's last record is all a worker
needs and `rollback` is the stack without its top. The checkpoint file must be readable
at the same path on every worker (a shared volume).

A worker loads a wanted checkpoint in a thread, over an index of its own, verified as at
start (`load_checkpoint`: SHA-256 from the command or the file's sidecar, format,
dimension), and swaps it in on the event loop, so between two batches: every click
before the swap is ranked and tagged (`model_version`) by the old model, every one
after by the new. A checkpoint that fails to load, or is of another kind than the
running model (item vectors or none, the dimension), is refused in one log line and the
worker serves the top-most checkpoint of the stack that does load (the startup model
if none): what serves is the same on every worker, one started later included. A
refused checkpoint is not tried again until its file changes. The startup model and
the last two loaded are kept in memory, so a rollback to them is immediate (as they
stood when swapped out: a model does not learn while it does not serve); an older one
is loaded again from its file.

User contexts are carried over as they are: their recent items are model-independent,
and a torch model's hidden state of the same size is where the new GRU starts from on
the user's next click (a state of another size starts from zero, as always). Item
vectors: the new model's are written to Redis at once, and the item-vector protocol
drops deltas and broadcasts of another model (stream/items/ledger.py), so each item's
canonical vector starts afresh in the new model's space.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model.base import ItemVectorModel, Recommender
from model.checkpoint import CheckpointError, load_checkpoint
from serving.faiss_index import FaissIndex
from stream.model_commands import Wanted, decode_stack

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Serving:
    """A model that served or can serve, with the index it searches."""

    wanted: Wanted | None  # None: the startup model
    model: Recommender
    index: FaissIndex


class ModelSwitch:
    """Reconciles the served model with the admin topic's wanted stack.

    `install(serving)` is called on the event loop to make `serving` the worker's
    model (the click path, the item-vector protocol, the views and metrics); the
    switch only decides what serves and loads it."""

    def __init__(
        self,
        startup: Serving,
        install: Callable[[Serving], None],
        *,
        dim: int,
        experiment: bool = False,
    ) -> None:
        self.startup = startup
        self.current = startup
        self.install = install
        self.dim = dim
        self.experiment = experiment
        self._kept: list[Serving] = []  # the last loaded ones, newest last
        self._wanted: list[Wanted] = []
        self._refused: set[tuple[Wanted, tuple[int, int] | None]] = set()
        self._changed = asyncio.Event()

    def want(self, stack: list[Wanted]) -> None:
        """A new admin record: serve its top (on the event loop)."""
        self._wanted = stack
        self._changed.set()

    async def run(self) -> None:
        """Reconcile until cancelled (a worker task)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self.reconcile()

    async def reconcile(self) -> None:
        """Serve the top-most checkpoint of the wanted stack that loads, else the
        startup model: the same choice on every worker, one started later included.
        Each refusal is one log line."""
        stack = list(self._wanted)
        for target in [*reversed(stack), None]:
            if target == self.current.wanted:
                return
            if target is not None and self.experiment:
                log.error(
                    "model swap refused: %s: a live swap replaces one model, and this "
                    "worker runs an A/B experiment (STREAMREC_VARIANTS); still serving %s",
                    target.path,
                    self.current.model.version,
                )
                continue
            serving = self._in_memory(target)
            if serving is None:
                assert target is not None  # the startup model is always kept
                refusal = (target, _file_state(target.path))
                if refusal in self._refused:
                    continue
                try:
                    serving = await asyncio.to_thread(self._load, target)
                except CheckpointError as exc:
                    log.error(
                        "model swap refused: %s; still serving %s",
                        exc,
                        self.current.model.version,
                    )
                    self._refused.add(refusal)
                    continue
                if self._wanted != stack:
                    self._changed.set()  # asked for something else meanwhile
                    return
            self._swap(serving)
            return

    def _in_memory(self, target: Wanted | None) -> Serving | None:
        if target is None:
            return self.startup
        return next((s for s in reversed(self._kept) if s.wanted == target), None)

    def _load(self, target: Wanted) -> Serving:
        """Load and check `target` (in a thread); CheckpointError in one line."""
        index = FaissIndex(self.dim)
        model, _ = load_checkpoint(
            target.path, index=index, dim=self.dim, expected_sha256=target.sha256
        )
        running = self.current.model
        if isinstance(model, ItemVectorModel) != isinstance(running, ItemVectorModel):
            index.close()
            kinds = {True: "with item vectors", False: "without item vectors"}
            raise CheckpointError(
                f"checkpoint {target.path} holds a {model.name} model "
                f"{kinds[isinstance(model, ItemVectorModel)]}, the running {running.name} "
                f"one is {kinds[isinstance(running, ItemVectorModel)]}: a live swap keeps "
                "the kind (restart the worker to change it)"
            )
        if len(index) >= index.exact_below:
            index.rebuild(wait=True)  # the approximate index, before it serves
        return Serving(target, model, index)

    def _swap(self, serving: Serving) -> None:
        """Make `serving` the worker's model, between two batches (on the loop)."""
        before = self.current
        self.install(serving)
        self.current = serving
        if serving.wanted is not None and serving not in self._kept:
            self._kept.append(serving)
        if before.wanted is not None and before not in self._kept:
            self._kept.append(before)
        # The startup model and the last two others stay loaded for an immediate
        # rollback; an older one is loaded again from its file if asked for.
        while len(self._kept) > 2:
            dropped = self._kept.pop(0)
            if dropped is not self.current:
                dropped.index.close()
        log.warning(
            "model swapped: now serving %s (was %s)",
            serving.model.version,
            before.model.version,
        )


def _file_state(path: str) -> tuple[int, int] | None:
    """(modification time, size) of the file at `path`, None if there is none: a
    refused checkpoint is tried again once this changes."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


async def follow_admin(
    bootstrap_servers: str,
    topic: str,
    switch: ModelSwitch,
    *,
    client_options: dict[str, Any],
) -> None:
    """Read every record of the admin topic, from the beginning and with no consumer
    group (every worker reads all of it), into `switch`. Until cancelled."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers.split(","),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="streamrec-admin-follower",
        **client_options,
    )
    await consumer.start()
    try:
        async for record in consumer:
            try:
                stack = decode_stack(record.value)
            except ValueError as exc:
                log.error("unreadable model command at offset %d skipped: %s", record.offset, exc)
                continue
            switch.want(stack)
    finally:
        await consumer.stop()
