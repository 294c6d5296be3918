"""Checkpoints swapped live over real sockets: `streamrec model load/rollback` on the
embedded broker, a worker process, its recommendation events, its index and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from model.checkpoint import load_checkpoint
from stream.events import Recommendation
from stream.settings import Settings
from tests.integration.test_pipeline import collect, send

pytestmark = pytest.mark.integration


def train(
    tmp_path: Path, name: str, model: str, pairs: list[tuple[str, str]], **flags: Any
) -> Path:
    """A checkpoint of `model` trained on sessions of the item pairs, each 40 times, and
    an item P clicked most; `flags` become `streamrec train` flags."""
    rows = ["SessionId\tItemId\tTime"]
    t = 1_600_000_000
    for n in range(40):
        for first, then in pairs:
            rows += [f"s{n}{first}\t{first}\t{t}", f"s{n}{first}\t{then}\t{t + 1}"]
            t += 3
    rows += [f"p{n}\tP\t{t + n}" for n in range(80)]
    data = tmp_path / f"{name}.tsv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / f"{name}.safetensors"
    extra = [part for key, value in flags.items() for part in (f"--{key}", str(value))]
    trained = subprocess.run(
        [sys.executable, "-m", "stream.cli", "train", "--data", str(data), "--model", model]
        + ["--out", str(out), "--quiet", "--version", name, *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    return out


def model_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STREAMREC_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "STREAMREC_APP_ID": settings.app_id,
    }
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", "model", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def probe(settings: Settings, item: str = "A") -> Recommendation:
    """A brand-new user's recommendation after one click on `item`."""
    event_id = uuid.uuid4().hex
    send(
        settings,
        [{"user_id": f"probe-{event_id[:8]}", "item_id": item, "event_id": event_id}],
    )
    records = collect(
        settings,
        settings.recommendations_topic,
        lambda rs: any(Recommendation.from_json(r.value).source_event_id == event_id for r in rs),
    )
    return next(
        rec
        for rec in map(Recommendation.from_json, (r.value for r in records))
        if rec.source_event_id == event_id
    )


def serving(settings: Settings, version: str, timeout_s: float = 60.0) -> Recommendation:
    """Probe until the worker answers with model `version`; the last probe's answer."""
    deadline = time.monotonic() + timeout_s
    rec = probe(settings)
    while rec.model_version != version and time.monotonic() < deadline:
        time.sleep(0.5)
        rec = probe(settings)
    return rec


def test_a_checkpoint_swaps_in_between_batches_bad_ones_are_refused_and_rollback_works(
    worker_factory: Any, tmp_path: Path
) -> None:
    first = train(tmp_path, "covisit-ab", "covisit", [("A", "B")])
    second = train(tmp_path, "covisit-ac", "covisit", [("A", "C")])
    worker = worker_factory(checkpoint=str(first))
    settings = worker.settings
    assert probe(settings).items[0].item_id == "B"

    # Clicks flow while the swap happens: every one is answered, the old model's
    # answers all before the new one's.
    tag = uuid.uuid4().hex[:6]
    steady = [
        {"user_id": f"{tag}-u{n % 20}", "item_id": "A" if n % 2 else "P", "event_id": f"{tag}-{n}"}
        for n in range(300)
    ]
    sender = threading.Thread(
        target=lambda: [
            send(settings, steady[n : n + 10]) or time.sleep(0.05) for n in range(0, 300, 10)
        ]
    )
    sender.start()
    time.sleep(0.5)
    loaded = model_command(settings, "load", str(second))
    assert loaded.returncode == 0, loaded.stderr
    sender.join()
    rec = serving(settings, "covisit-ac")
    assert rec.model_version == "covisit-ac" and rec.items[0].item_id == "C"
    ids = {e["event_id"] for e in steady}
    steady_recs = [
        Recommendation.from_json(r.value)
        for r in collect(
            settings,
            settings.recommendations_topic,
            lambda rs: ids <= {Recommendation.from_json(r.value).source_event_id for r in rs},
        )
    ]
    versions = [
        r.model_version
        for r in sorted(steady_recs, key=lambda r: r.emitted_at)
        if r.source_event_id in ids
    ]
    assert len(versions) == 300
    switch = versions.index("covisit-ac") if "covisit-ac" in versions else len(versions)
    assert set(versions[:switch]) <= {"covisit-ab"}
    assert set(versions[switch:]) <= {"covisit-ac"}, "the version switched more than once"

    # A wrong hash and a truncated file: one log line each, the model keeps serving.
    refused = model_command(settings, "load", str(first), "--sha256", "0" * 64)
    assert refused.returncode == 0, refused.stderr
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(second.read_bytes()[:200])
    Path(f"{truncated}.sha256").write_text(Path(f"{second}.sha256").read_text())
    assert model_command(settings, "load", str(truncated)).returncode == 0
    deadline = time.monotonic() + 30
    while worker.log_tail(200).count("model swap refused") < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    log = worker.log_tail(200)
    assert log.count("model swap refused") == 2, log
    assert "Traceback" not in log
    assert probe(settings).model_version == "covisit-ac"

    # Rollback: the two refused loads, then the swap itself, back to the startup model.
    for _ in range(2):
        assert model_command(settings, "rollback").returncode == 0
    status = model_command(settings, "status")
    assert orjson.loads(status.stdout)["checkpoints"] == [str(second)]
    assert model_command(settings, "rollback").returncode == 0
    back = serving(settings, "covisit-ab")
    assert back.model_version == "covisit-ab" and back.items[0].item_id == "B"
    # What the worker said (shown with pytest -s): one line per swap and refusal.
    print("\n".join(line for line in worker.log_tail(400).splitlines() if "model swap" in line))
    nothing = model_command(settings, "rollback")
    assert nothing.returncode == 1
    assert nothing.stderr.strip().endswith(
        "nothing to roll back: the workers serve their startup model"
    )


def test_a_torch_checkpoint_brings_its_item_vectors_to_the_index_and_redis(
    worker_factory: Any, tmp_path: Path
) -> None:
    checkpoint = train(tmp_path, "gru-ac", "torch", [("A", "C"), ("D", "E")], dim=16)
    other_dim = train(tmp_path, "gru-8d", "torch", [("A", "C")], dim=8)
    worker = worker_factory(dim=16)
    settings = worker.settings
    send(settings, [{"user_id": "w", "item_id": i, "event_id": uuid.uuid4().hex} for i in "ABAB"])
    assert probe(settings).model_version.startswith("torch-gru-16d")

    assert model_command(settings, "load", str(other_dim)).returncode == 0
    deadline = time.monotonic() + 30
    while "model swap refused" not in worker.log_tail(100) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "gru-8d" in worker.log_tail(100) and "expected dim 16" in worker.log_tail(100)

    assert model_command(settings, "load", str(checkpoint)).returncode == 0
    assert serving(settings, "gru-ac").model_version == "gru-ac"
    trained, _ = load_checkpoint(checkpoint)
    base = f"http://{settings.web_host}:{settings.web_port}"
    served = orjson.loads(urllib.request.urlopen(f"{base}/api/items/E", timeout=5).read())
    np.testing.assert_allclose(served["vector"], trained.item_vector("E"), rtol=1e-6)  # type: ignore[attr-defined]
    client = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + 20
    stored = None
    while time.monotonic() < deadline:
        raw = client.hget(f"{settings.redis_prefix}item:E", "v")
        stored = None if raw is None else np.frombuffer(raw, dtype="<f4")
        if stored is not None and np.allclose(stored, trained.item_vector("E")):  # type: ignore[attr-defined]
            break
        time.sleep(0.3)
    assert stored is not None
    np.testing.assert_allclose(stored, trained.item_vector("E"), rtol=1e-6)  # type: ignore[attr-defined]


def test_two_workers_swap_and_learn_on_in_the_new_models_space(spawn: Any, tmp_path: Path) -> None:
    from tests.integration.test_serving import (
        base_url,
        clicks,
        get_json,
        redis_items,
        two_workers,
        wait_for,
    )

    before = clicks(600, "swap1", users=30, items=80, seed=21)
    after = clicks(400, "swap2", users=30, items=80, seed=22)
    rows = ["SessionId\tItemId\tTime"]
    rows += [f"{e['user_id']}\t{e['item_id']}\t{1_600_000_000 + n}" for n, e in enumerate(before)]
    data = tmp_path / "history.tsv"
    data.write_text("\n".join(rows) + "\n")
    checkpoint = tmp_path / "gru-swap.safetensors"
    trained = subprocess.run(
        [sys.executable, "-m", "stream.cli", "train", "--data", str(data), "--model", "torch"]
        + ["--out", str(checkpoint), "--quiet", "--version", "gru-swap", "--seed", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    model, _ = load_checkpoint(checkpoint)

    workers = two_workers(spawn)
    first, settings = workers[0], workers[0].settings
    send(settings, before)
    items = sorted({e["item_id"] for e in before})

    def index_of(worker: Any) -> dict[str, np.ndarray]:
        found = {}
        for item_id in items:
            status, body = get_json(f"{base_url(worker.settings)}/api/items/{item_id}")
            if status == 200:
                found[item_id] = np.asarray(body["vector"], dtype=np.float32)
        return found

    def agree() -> bool:
        held = [index_of(w) for w in workers]
        return sorted(held[0]) == items and all(
            np.array_equal(held[0][i], held[1].get(i, held[0][i] + 1)) for i in items
        )

    wait_for(agree, 60, "both workers to hold the same vectors")
    old = index_of(first)

    assert model_command(settings, "load", str(checkpoint)).returncode == 0
    for worker in workers:
        wait_for(
            lambda w=worker: (
                'version="gru-swap"'
                in urllib.request.urlopen(f"{base_url(w.settings)}/metrics").read().decode()
            ),
            60,
            "the swap",
        )
    send(settings, after)
    clicked_after = {e["item_id"] for e in after}
    wait_for(agree, 60, "both workers to agree again after the swap")
    held = index_of(first)
    for item_id in items:
        new = model.item_vector(item_id)  # type: ignore[attr-defined]
        if item_id not in clicked_after:
            np.testing.assert_array_equal(held[item_id], new, err_msg=item_id)
        else:
            # Learned on from the checkpoint's vector, not from the old model's.
            assert np.linalg.norm(held[item_id] - new) < np.linalg.norm(
                held[item_id] - old[item_id]
            ), item_id

    def redis_matches() -> bool:
        stored = redis_items(settings)
        return all(i in stored and np.array_equal(stored[i][0], held[i]) for i in items)

    wait_for(redis_matches, 30, "Redis to hold the new model's vectors")
