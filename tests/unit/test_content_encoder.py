"""The hashed content encoder (issue 15): the same features in every process, and a
mapping that learns where content lands in the item space."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.content import ItemContent
from model.content_encoder import ContentEncoder, HashedContentEncoder, stable_bucket

ROOT = Path(__file__).parents[2]
FILM = ItemContent(title="Heat (1995)", text="a heist", categories=("Action", "Crime"))


def features_in_a_new_process(hash_seed: str) -> str:
    code = (
        "from model.content import ItemContent\n"
        "from model.content_encoder import HashedContentEncoder\n"
        "e = HashedContentEncoder(4)\n"
        "f = e._featurise(ItemContent(title='Heat (1995)', text='a heist', "
        "categories=('Action', 'Crime')))\n"
        "print(f.buckets.tolist(), f.weights.tolist())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_features_are_the_same_in_every_process() -> None:
    # Python's hash() of a str differs between these two processes; the buckets must not.
    here = HashedContentEncoder(4)._featurise(FILM)
    assert features_in_a_new_process("1") == features_in_a_new_process("2")
    assert features_in_a_new_process("3").strip() == (
        f"{here.buckets.tolist()} {here.weights.tolist()}"
    )
    assert stable_bucket("c:action", 1 << 20) == stable_bucket("c:action", 1 << 20)


def test_features_have_length_one_with_or_without_an_embedding() -> None:
    encoder = HashedContentEncoder(4)
    plain = encoder._featurise(FILM)
    assert np.isclose(float(plain.weights @ plain.weights), 1.0)
    dense = encoder._featurise(ItemContent(title="x", embedding=(3.0, 4.0)))
    assert dense.dense is not None
    total = float(dense.weights @ dense.weights + dense.dense @ dense.dense)
    assert np.isclose(total, 1.0)


def learned(lr: float) -> tuple[HashedContentEncoder, np.ndarray, np.ndarray]:
    """Five westerns clicked near `west`, five space films near `space`; what each
    item's clicks taught its row is taught to the encoder, round after round."""
    rng = np.random.default_rng(0)
    west, space = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    encoder = HashedContentEncoder(8, lr=lr)
    targets = {}
    for j in range(5):
        encoder.set_content(
            {
                f"w{j}": ItemContent(title=f"Ride {j}", categories=("Western",)),
                f"s{j}": ItemContent(title=f"Orbit {j}", categories=("Sci-Fi",)),
            }
        )
        targets[f"w{j}"] = west + 0.1 * rng.normal(size=8).astype(np.float32)
        targets[f"s{j}"] = space + 0.1 * rng.normal(size=8).astype(np.float32)
    for _ in range(30):
        for item_id, target in targets.items():
            encoder.learn([item_id], target[None, :])
    return encoder, west, space


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_an_unseen_item_lands_near_the_clicked_items_of_its_category() -> None:
    encoder, west, space = learned(lr=0.1)
    encoder.set_content({"new": ItemContent(title="Dust", categories=("Western",))})
    vector = encoder.vectors(["new"])[0]
    # The unseen western shares only its category (and the bias) with the clicked ones.
    assert cosine(vector, west) > 0.9
    assert cosine(vector, west) > cosine(vector, space) + 0.3
    assert isinstance(encoder, ContentEncoder)


def test_without_learning_content_vectors_stay_at_zero() -> None:
    encoder = HashedContentEncoder(8)
    encoder.set_content({"a": FILM})
    assert not encoder.vectors(["a"]).any()
    with pytest.raises(KeyError):
        encoder.vectors(["unknown"])


def test_the_upstream_embedding_is_learned_through_its_projection() -> None:
    encoder = HashedContentEncoder(2, lr=0.5)
    encoder.set_content(
        {
            "a": ItemContent(embedding=(1.0, 0.0, 0.0)),
            "b": ItemContent(embedding=(0.0, 1.0, 0.0)),
            "c": ItemContent(embedding=(0.9, 0.1, 0.0)),  # never learned from
        }
    )
    for _ in range(60):
        encoder.learn(["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    c = encoder.vectors(["c"])[0]
    assert c[0] > 0.6 and c[0] > 3 * c[1]
    with pytest.raises(ValueError, match="dimension 2, expected 3"):
        encoder.set_content({"d": ItemContent(embedding=(1.0, 2.0))})


def test_similarity_compares_content_without_learning() -> None:
    encoder = HashedContentEncoder(4)
    encoder.set_content(
        {
            "a": ItemContent(title="Ride", categories=("Western",)),
            "b": ItemContent(title="Dust", categories=("Western",)),
            "c": ItemContent(title="Orbit", categories=("Sci-Fi",)),
        }
    )
    near, far, unknown = encoder.similarity(["a"], ["b", "c", "zzz"])
    assert near > 0.3 and far == 0.0 and unknown == 0.0


def test_state_round_trips_exactly() -> None:
    encoder, _, _ = learned(lr=0.1)
    encoder.set_content({"e": ItemContent(embedding=(1.0, 2.0))})
    encoder.learn(["e"], np.ones((1, 8), dtype=np.float32))
    loaded = HashedContentEncoder(8)
    loaded.load_state_dict(encoder.state_dict())
    ids = list(encoder.contents)
    assert loaded.contents == encoder.contents
    np.testing.assert_array_equal(loaded.vectors(ids), encoder.vectors(ids))
    with pytest.raises(ValueError, match="dim"):
        HashedContentEncoder(4).load_state_dict(encoder.state_dict())
