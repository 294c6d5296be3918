"""The torch model with item content (issue 15): unchanged without it, rows that start
from content, cold items among the candidates, and state that round-trips."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from model.base import Interaction, UserContext
from model.checkpoint import load_checkpoint, save_checkpoint
from model.content import ContentAware, ItemContent
from model.torch_model import TorchRecommender

# The digest of `fingerprint` computed by the torch model without content: a model
# never given content must still produce it, bit for bit. First pinned before content
# existed (commit 0ec360c); re-pinned when candidate scores became one row-wise product
# per block (blocks.py `_features`), which rounds differently, when the mixer's default
# became a step on one click in four (`mix_every`), and when the digest moved to
# portable arithmetic: the same code gave 4266a93002ee197e on the machine that pinned
# it and 4b452678983732ec on an AVX-512 one, since the kernels' last bits follow the
# CPU's vector width and the BLAS path. So it is computed in a child process on
# portable kernels (`PORTABLE_ARITHMETIC`), which gave the same digest here with MKL
# free and with MKL held to AVX2. Re-pinned when the GRU step's gradients were written
# out instead of taken by autograd (encoder.py `_train`): the same formulas, rounded in
# another order.
BEFORE_CONTENT = "eb1cd4da6f81a286"
PORTABLE_ARITHMETIC = {
    "ATEN_CPU_CAPABILITY": "default",  # torch's unvectorised kernels
    "MKL_CBWR": "COMPATIBLE",  # MKL's results the same on every x86-64 CPU
    # numpy's baseline loops: every optimisation it dispatches at run time turned off
    # (here X86_V3 X86_V4 AVX512_ICL AVX512_SPR; the list follows numpy's build).
    "NPY_DISABLE_CPU_FEATURES": " ".join(
        getattr(np._core._multiarray_umath, "__cpu_dispatch__", ())
    ),
}


def portable_fingerprints() -> list[str]:
    """`fingerprint` of a plain model and of one given an empty catalogue, computed in
    a child process on `PORTABLE_ARITHMETIC`."""
    code = (
        "from model.torch_model import TorchRecommender\n"
        "from tests.unit.test_torch_content import fingerprint\n"
        "empty = TorchRecommender(dim=8, seed=3)\n"
        "empty.set_content({})\n"
        "print(fingerprint(TorchRecommender(dim=8, seed=3)), fingerprint(empty))\n"
        "print('content' in empty.state_dict())\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, **PORTABLE_ARITHMETIC, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    digests, has_content = done.stdout.split("\n")[:2]
    assert has_content == "False"
    return digests.split()


def fingerprint(model: TorchRecommender) -> str:
    """A digest of every ranking (ids and scores) over a seeded stream learned one
    event at a time, then of a batched tail, then of the embeddings and the mixer."""
    rng = random.Random(7)
    events = [
        Interaction(f"u{rng.randrange(12)}", f"i{rng.randrange(40)}", float(t)) for t in range(400)
    ]
    contexts: dict[str, UserContext] = {}
    digest = hashlib.sha256()
    for event in events[:300]:
        context = contexts.get(event.user_id, model.new_context())
        for scored in model.recommend(context, 10, set(context.recent[-1:])):
            digest.update(f"{scored.item_id}:{scored.score!r};".encode())
        contexts[event.user_id] = model.learn_one(context, event).context
    for start in range(300, 400, 20):
        chunk = events[start : start + 20]
        before = {e.user_id: contexts.get(e.user_id, model.new_context()) for e in chunk}
        for event, update in zip(chunk, model.learn_many(before, chunk), strict=True):
            contexts[event.user_id] = update.context
    state = model.state_dict()
    digest.update(state["embeddings"].numpy().tobytes())
    digest.update(state["mix"].numpy().tobytes())
    return digest.hexdigest()[:16]


def test_without_content_the_model_is_what_it_was() -> None:
    # An empty catalogue: nothing to know, still no content side.
    assert portable_fingerprints() == [BEFORE_CONTENT, BEFORE_CONTENT]


def test_content_changes_the_model() -> None:
    # The check above could pass with content ignored altogether.
    model = TorchRecommender(dim=8, seed=3)
    model.set_content({f"i{j}": ItemContent(categories=(f"k{j % 4}",)) for j in range(40)})
    assert isinstance(model, ContentAware)
    assert fingerprint(model) != fingerprint(TorchRecommender(dim=8, seed=3))


def genre_stream(seed: int, n: int) -> list[Interaction]:
    """Users who each stick to one of two genres: items w0..w9 or s0..s9."""
    rng = random.Random(seed)
    events = []
    for t in range(n):
        user = rng.randrange(8)
        prefix = "w" if user % 2 else "s"
        events.append(Interaction(f"u{user}", f"{prefix}{rng.randrange(10)}", float(t)))
    return events


def catalogue() -> dict[str, ItemContent]:
    """w0..w11 westerns and s0..s11 space films; w10, w11, s10, s11 are never clicked."""
    contents = {}
    for j in range(12):
        contents[f"w{j}"] = ItemContent(title=f"Ride {j}", categories=("Western",))
        contents[f"s{j}"] = ItemContent(title=f"Orbit {j}", categories=("Sci-Fi",))
    return contents


def trained(events: list[Interaction]) -> tuple[TorchRecommender, dict[str, UserContext]]:
    model = TorchRecommender(dim=8, seed=1, content_refresh=20)
    model.set_content(catalogue())
    contexts: dict[str, UserContext] = {}
    for event in events:
        context = contexts.get(event.user_id, model.new_context())
        contexts[event.user_id] = model.learn_one(context, event).context
    return model, contexts


def test_a_cold_items_content_vector_lands_near_its_genre() -> None:
    model, _ = trained(genre_stream(0, 600))
    cold = model.content_vectors(["w10", "s10", "unknown"])
    assert set(cold) == {"w10", "s10"}

    def centre(prefix: str) -> np.ndarray:
        return np.mean([model.item_vector(f"{prefix}{j}") for j in range(10)], axis=0)

    west, space = centre("w"), centre("s")
    distance = np.linalg.norm
    assert distance(cold["w10"] - west) < distance(cold["w10"] - space)
    assert distance(cold["s10"] - space) < distance(cold["s10"] - west)


def test_a_new_row_starts_at_its_content_vector_plus_the_usual_draw() -> None:
    events = genre_stream(1, 200)
    with_content, _ = trained(events)
    without = TorchRecommender(dim=8, seed=1)
    contexts: dict[str, UserContext] = {}
    for event in events:
        context = contexts.get(event.user_id, without.new_context())
        contexts[event.user_id] = without.learn_one(context, event).context
    start = with_content.content_vectors(["w11"])["w11"]
    # Both generators made the same draws so far, so the new rows get the same draw.
    row_with, row_without = with_content.encoder.row("w11"), without.encoder.row("w11")
    np.testing.assert_allclose(
        with_content.encoder.vector(row_with) - start,
        without.encoder.vector(row_without),
        atol=1e-6,
    )
    assert np.linalg.norm(start) > 0.1


def test_never_clicked_items_are_recommended() -> None:
    model, contexts = trained(genre_stream(2, 600))
    western_fan = contexts["u1"]
    ranked = [s.item_id for s in model.recommend(western_fan, 24, set(western_fan.recent))]
    assert {"w10", "w11"} <= set(ranked)
    assert ranked.index("w10") < ranked.index("s10")
    # With every item asked for, each one comes back once.
    everything = model.recommend(western_fan, 100)
    assert len(everything) == len({s.item_id for s in everything}) == 24


def test_content_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    events = genre_stream(3, 300)
    model, contexts = trained(events[:250])
    saved = save_checkpoint(model, tmp_path / "content.safetensors")
    loaded, _ = load_checkpoint(saved.path)
    assert isinstance(loaded, TorchRecommender)
    assert loaded.content_vectors(list(catalogue())).keys() == set(catalogue())
    for a, b in zip(
        model.content_vectors(list(catalogue())).values(),
        loaded.content_vectors(list(catalogue())).values(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    theirs = dict(contexts)
    for event in events[250:]:
        a = model.learn_one(contexts.get(event.user_id, model.new_context()), event)
        b = loaded.learn_one(theirs.get(event.user_id, loaded.new_context()), event)
        contexts[event.user_id], theirs[event.user_id] = a.context, b.context
        assert a.context == b.context
        assert model.recommend(a.context, 10) == loaded.recommend(b.context, 10)
    again = save_checkpoint(loaded, tmp_path / "again.safetensors")
    assert again.content_sha256 == save_checkpoint(model, tmp_path / "b.safetensors").content_sha256
