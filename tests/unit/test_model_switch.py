"""Which model a worker serves for the admin topic's wanted stack (stream/worker/swap.py),
with real checkpoint files and no broker (tests/integration/test_model_swap.py runs it
over the embedded broker)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from model import Interaction, build_recommender
from model.checkpoint import save_checkpoint
from serving.faiss_index import FaissIndex
from stream.model_commands import Wanted, decode_stack, encode_stack
from stream.worker.swap import ModelSwitch, Serving


def covisit(tmp_path: Path, name: str, after_a: str) -> Wanted:
    model = build_recommender("covisit")
    context = model.new_context()
    for t, item in enumerate(["A", after_a] * 5):
        context = model.learn_one(context, Interaction("u", item, float(t))).context
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(model, path, version=name)
    return Wanted(str(path))


def switch_over(startup_version: str) -> tuple[ModelSwitch, list[str]]:
    startup = build_recommender("covisit")
    startup.version = startup_version
    installed: list[str] = []
    switch = ModelSwitch(
        Serving(None, startup, FaissIndex(4)),
        lambda serving: installed.append(serving.model.version),
        dim=4,
    )
    return switch, installed


def test_the_top_most_checkpoint_that_loads_serves_and_a_refusal_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = covisit(tmp_path, "good", "B")
    bad = Wanted(good.path, sha256="0" * 64)
    switch, installed = switch_over("startup")

    async def run() -> None:
        switch.want([good, bad])  # as a worker started after both loads reads it
        await switch.reconcile()
        switch.want([good, bad, Wanted(str(tmp_path / "missing.safetensors"))])
        await switch.reconcile()
        switch.want([good])  # a rollback of the two refused ones: nothing to do
        await switch.reconcile()
        switch.want([])  # and of the good one: the startup model, kept in memory
        await switch.reconcile()
        switch.want([good])  # loaded again? No: kept too
        await switch.reconcile()

    with caplog.at_level(logging.ERROR, logger="stream.worker.swap"):
        asyncio.run(run())
    assert installed == ["good", "startup", "good"]
    refusals = [r.getMessage() for r in caplog.records if "model swap refused" in r.getMessage()]
    assert len(refusals) == 2, refusals  # each refused checkpoint once, not on every record
    assert "missing.safetensors" in refusals[1]


def test_a_torch_checkpoint_is_refused_by_a_worker_without_item_vectors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch_model = build_recommender("torch", dim=4)
    torch_model.learn_one(torch_model.new_context(), Interaction("u", "A", 1.0))
    path = tmp_path / "gru.safetensors"
    save_checkpoint(torch_model, path, version="gru")
    switch, installed = switch_over("startup")
    switch.want([Wanted(str(path))])
    with caplog.at_level(logging.ERROR, logger="stream.worker.swap"):
        asyncio.run(switch.reconcile())
    assert installed == []
    assert "a live swap keeps the kind" in caplog.text


def test_admin_records_round_trip_and_refuse_garbage() -> None:
    stack = [Wanted("/m/a.safetensors"), Wanted("/m/b.safetensors", "ab" * 32)]
    assert decode_stack(encode_stack(stack)) == stack
    assert decode_stack(encode_stack([])) == []
    for raw in (b"", b"{}", b"[1]", b'{"checkpoints": [{}]}'):
        with pytest.raises(ValueError, match="not a model command"):
            decode_stack(raw)
