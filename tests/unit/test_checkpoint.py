"""Checkpoints: every registered model round-trips exactly, and bad files are refused.

"Exactly" means what the worker would notice: a model loaded from a checkpoint
recommends the same lists as the model that was saved, and after learning the same
next events both give the same updates and the same lists.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from model import MODEL_NAMES, ExactIndex, Interaction, Recommender, Update, UserContext
from model.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
)
from model.registry import build_recommender
from stream.dev.generate import synthetic_clicks

DIM = 16


def clicks(n: int, seed: int = 0) -> list[Interaction]:
    """Planted successor sequences (see stream/dev/generate.py), one second apart."""
    return [
        Interaction(p["user_id"], p["item_id"], 1_700_000_000.0 + i, session_id=p["session_id"])
        for i, p in enumerate(synthetic_clicks(n, users=40, items=60, seed=seed))
    ]


EVENTS = clicks(300)
TRAIN, LATER = EVENTS[:200], EVENTS[200:]


def learn(model: Recommender, events: list[Interaction], contexts: dict[str, UserContext]) -> None:
    for event in events:
        contexts[event.user_id] = model.learn_one(
            contexts.get(event.user_id, model.new_context()), event
        ).context


def trained(name: str) -> tuple[Recommender, dict[str, UserContext]]:
    model = build_recommender(name, dim=DIM, seed=3)
    contexts: dict[str, UserContext] = {}
    learn(model, TRAIN, contexts)
    return model, contexts


def recommendations(model: Recommender, contexts: dict[str, UserContext]) -> dict[str, Any]:
    return {
        user: model.recommend(ctx, 10, exclude=ctx.recent[-3:]) for user, ctx in contexts.items()
    }


def assert_same_update(a: Update, b: Update) -> None:
    assert a.context == b.context
    assert a.item_vectors.keys() == b.item_vectors.keys()
    for item_id, vector in a.item_vectors.items():
        np.testing.assert_array_equal(vector, b.item_vectors[item_id])
    if a.user_vector is None:
        assert b.user_vector is None
    else:
        np.testing.assert_array_equal(a.user_vector, b.user_vector)


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a checkpoint load must never unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def one_line_naming(exc: pytest.ExceptionInfo[CheckpointError], path: Path) -> bool:
    return "\n" not in str(exc.value) and path.name in str(exc.value)


# Round trips.


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loaded_model_recommends_and_keeps_learning_like_the_saved_one(
    name: str, tmp_path: Path, no_unpickling: None
) -> None:
    original, contexts = trained(name)
    saved = save_checkpoint(original, tmp_path / "model.safetensors")
    index = ExactIndex(DIM)  # stands in for the worker's FAISS index
    loaded, info = load_checkpoint(saved.path, index=index, dim=DIM)

    assert info == saved
    assert recommendations(loaded, contexts) == recommendations(original, contexts)
    if name == "torch":
        assert len(index) == len(original.state_dict()["ids"])  # vectors reached the index

    contexts_loaded = dict(contexts)
    for event in LATER:
        a = original.learn_one(contexts.get(event.user_id, original.new_context()), event)
        b = loaded.learn_one(contexts_loaded.get(event.user_id, loaded.new_context()), event)
        assert_same_update(a, b)
        contexts[event.user_id], contexts_loaded[event.user_id] = a.context, b.context
    assert recommendations(loaded, contexts_loaded) == recommendations(original, contexts)
    # And the learned states are still identical, down to the content hash.
    again = save_checkpoint(original, tmp_path / "a.safetensors")
    assert (
        save_checkpoint(loaded, tmp_path / "b.safetensors").content_sha256 == again.content_sha256
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_untrained_model_round_trips(name: str, tmp_path: Path) -> None:
    info = save_checkpoint(build_recommender(name, dim=DIM), tmp_path / "empty.safetensors")
    loaded, _ = load_checkpoint(info.path)
    assert loaded.recommend(loaded.new_context(), 5) == []
    learn(loaded, TRAIN[:20], {})
    assert len(loaded.recommend(loaded.new_context(), 5)) == 5


def test_version_defaults_to_name_time_and_content_hash(tmp_path: Path) -> None:
    model, contexts = trained("covisit")
    first = save_checkpoint(model, tmp_path / "first.safetensors")
    second = save_checkpoint(model, tmp_path / "second.safetensors")

    assert re.fullmatch(r"covisit-\d{8}T\d{6}Z-[0-9a-f]{12}", first.version)
    assert first.version.endswith(first.content_sha256[:12])
    # The content hash names the learned state, not the file or the moment it was saved.
    assert first.content_sha256 == second.content_sha256
    model.learn_one(contexts["u1"], Interaction("u1", "i1", 1_800_000_000.0))
    assert (
        save_checkpoint(model, tmp_path / "third.safetensors").content_sha256
        != first.content_sha256
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loaded_model_reports_the_checkpoint_version(name: str, tmp_path: Path) -> None:
    model, contexts = trained(name)
    path = tmp_path / "model.safetensors"
    saved = save_checkpoint(model, path, version="nightly-42", metadata={"data": "x.txt", "n": 3})
    loaded, info = load_checkpoint(path)

    assert isinstance(loaded, Recommender)
    assert type(loaded) is type(model), "the version is an attribute: no wrapper"
    assert loaded.name == name
    assert (saved.version, info.version, loaded.version) == ("nightly-42",) * 3
    assert info.metadata == {"data": "x.txt", "n": 3}
    learn(loaded, LATER[:20], contexts)
    assert loaded.version == "nightly-42", "the version must not change while learning"


def test_sidecar_is_sha256sum_format_and_no_temporary_files_remain(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_checkpoint(trained("popularity")[0], path)
    info = save_checkpoint(trained("covisit")[0], path)  # overwrites in place

    assert sidecar_path(path).read_text() == f"{info.file_sha256}  model.safetensors\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, sidecar_path(path).name]
    assert load_checkpoint(path)[1].model_name == "covisit"


# What save refuses.


class _FakeModel:
    name = "popularity"

    def __init__(self, state: dict[Any, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[Any, Any]:
        return self._state


@pytest.mark.parametrize(
    "state, where",
    [
        ({"ids": {"a", "b"}}, "state['ids']"),
        ({"next": {1: 2.0}}, "state['next']"),
        ({"nested": [0, {"x": np.float32(1.0)}]}, "state['nested'][1]['x']"),
    ],
)
def test_save_refuses_state_that_would_not_round_trip(
    state: dict[Any, Any], where: str, tmp_path: Path
) -> None:
    with pytest.raises(TypeError, match=re.escape(where)):
        save_checkpoint(_FakeModel(state), tmp_path / "model.safetensors")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_bad_versions_metadata_and_directories(tmp_path: Path) -> None:
    model = build_recommender("popularity")
    with pytest.raises(ValueError, match="version"):
        save_checkpoint(model, tmp_path / "m.safetensors", version="has space")
    with pytest.raises(ValueError, match="metadata"):
        save_checkpoint(model, tmp_path / "m.safetensors", metadata={"x": object()})
    with pytest.raises(CheckpointError, match="cannot write"):
        save_checkpoint(model, tmp_path / "missing" / "m.safetensors")


# What load refuses.


@pytest.fixture(scope="module")
def saved_torch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "model.safetensors"
    save_checkpoint(trained("torch")[0], path)
    return path


@pytest.fixture
def checkpoint(saved_torch: Path, tmp_path: Path) -> Path:
    """A fresh copy of one trained torch checkpoint and its sidecar, for editing."""
    path = tmp_path / saved_torch.name
    path.write_bytes(saved_torch.read_bytes())
    sidecar_path(path).write_bytes(sidecar_path(saved_torch).read_bytes())
    return path


def rewrite(path: Path, edit: Any) -> None:
    """Rewrite the checkpoint at `path` after `edit(header, tensors)`, leaving the
    sidecar stale."""
    with safetensors.safe_open(path, "pt") as handle:
        header = handle.metadata()
    tensors = safetensors.torch.load_file(path)
    edit(header, tensors)
    safetensors.torch.save_file(tensors, path, metadata=header)


def test_tampered_file_is_refused_before_parsing(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x01
    checkpoint.write_bytes(data)

    def parse(*args: Any) -> Any:
        raise AssertionError("parsed a file whose hash does not match")

    monkeypatch.setattr(safetensors.torch, "load", parse)
    monkeypatch.setattr(safetensors.torch, "load_file", parse)
    monkeypatch.setattr(safetensors, "safe_open", parse)
    with pytest.raises(CheckpointError, match="refusing") as exc:
        load_checkpoint(checkpoint)
    assert one_line_naming(exc, checkpoint)


def test_a_hash_is_required(checkpoint: Path) -> None:
    file_sha256 = sidecar_path(checkpoint).read_text().split()[0]
    sidecar_path(checkpoint).unlink()
    with pytest.raises(CheckpointError, match="no hash") as exc:
        load_checkpoint(checkpoint)
    assert one_line_naming(exc, checkpoint)

    # An expected hash from configuration replaces the sidecar, and wins over it.
    assert (
        load_checkpoint(checkpoint, expected_sha256=file_sha256.upper())[1].file_sha256
        == file_sha256
    )
    sidecar_path(checkpoint).write_text(f"{file_sha256}  {checkpoint.name}\n")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(checkpoint, expected_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="64 hex"):
        load_checkpoint(checkpoint, expected_sha256="abc")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint file") as exc:
        load_checkpoint(tmp_path / "nothing.safetensors")
    assert one_line_naming(exc, tmp_path / "nothing.safetensors")


def test_other_safetensors_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"weight": torch.ones(2, 2)}, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a streamrec checkpoint") as exc:
        load_checkpoint(path, expected_sha256=_sha256(path))
    assert one_line_naming(exc, path)


@pytest.mark.parametrize("keep", [0, 7, 8, 200, -1])
def test_truncated_files_are_refused_even_with_a_matching_hash(checkpoint: Path, keep: int) -> None:
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="not a safetensors file") as exc:
        load_checkpoint(checkpoint, expected_sha256=_sha256(checkpoint))
    assert one_line_naming(exc, checkpoint)


def test_content_that_does_not_match_its_content_hash_is_refused(checkpoint: Path) -> None:
    # Rewritten with edited embeddings under the original header, and a fresh sidecar:
    # the file hash passes, the content hash does not.
    def edit(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
        name = next(n for n, t in tensors.items() if t.is_floating_point() and t.numel())
        tensors[name].view(-1)[0] += 1.0

    rewrite(checkpoint, edit)
    with pytest.raises(CheckpointError, match="content hash") as exc:
        load_checkpoint(checkpoint, expected_sha256=_sha256(checkpoint))
    assert one_line_naming(exc, checkpoint)


def test_future_format_versions_are_refused(checkpoint: Path) -> None:
    future = str(FORMAT_VERSION + 1)
    rewrite(checkpoint, lambda header, tensors: header.update(format_version=future))
    with pytest.raises(CheckpointError, match=f"format version '{future}'"):
        load_checkpoint(checkpoint, expected_sha256=_sha256(checkpoint))


def test_version_1_files_are_refused_naming_both_versions(checkpoint: Path) -> None:
    # Version 1 states could lack parts of the torch model's state; there is no
    # migration, so the message must say what was found and what is needed.
    assert FORMAT_VERSION == 2
    rewrite(checkpoint, lambda header, tensors: header.update(format_version="1"))
    with pytest.raises(CheckpointError, match="format version '1'.* reads version 2") as exc:
        load_checkpoint(checkpoint, expected_sha256=_sha256(checkpoint))
    assert one_line_naming(exc, checkpoint)


def test_a_model_of_another_dimension_is_refused_before_it_reaches_the_index(
    checkpoint: Path,
) -> None:
    index = ExactIndex(32)
    with pytest.raises(CheckpointError, match="16-dim torch model, expected dim 32"):
        load_checkpoint(checkpoint, index=index, dim=32)
    assert len(index) == 0


def test_state_document_keeps_dict_order_and_tensor_paths(checkpoint: Path) -> None:
    tensors = safetensors.torch.load_file(checkpoint)
    document = json.loads(bytes(tensors.pop("__streamrec_state__").numpy()))
    state = trained("torch")[0].state_dict()

    assert list(document["state"]) == list(state)
    assert set(document["tensors"]) == set(tensors) and tensors
    for name, path in document["tensors"].items():
        value: Any = state
        for part in path:
            value = value[part]
        assert name == "/".join(map(str, path))
        assert torch.equal(value, tensors[name])


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
