"""The `streamrec` command as a user runs it: the demo, errors, Ctrl-C, no orphans."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from stream.dev.services import DevStack, free_port
from stream.kafka.topics import ensure_topics
from stream.settings import Settings
from tests.conftest import read_topic

pytestmark = pytest.mark.integration


def streamrec(
    *args: str, timeout: float = 240, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,  # type: ignore[call-overload]
    )


class Demo:
    """`streamrec dev` in a child process, with every descendant it ever had recorded
    (polled), so the test can check that each one is gone after it exits."""

    def __init__(self, *args: str, cwd: Path) -> None:
        # faulthandler: a SIGABRT makes a hung demo print every thread's stack (`stacks`).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "dev", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        self.descendants: set[psutil.Process] = set()

    def poll_children(self) -> int:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.descendants |= set(psutil.Process(self.process.pid).children(recursive=True))
        return len(self.descendants)

    def wait(self, timeout_s: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None and time.monotonic() < deadline:
            self.poll_children()
            time.sleep(0.2)
        return self.process.communicate(timeout=max(1.0, deadline - time.monotonic()))

    def stacks(self) -> str:
        """Where a demo that does not exit is stuck: every thread's Python stack (it is
        aborted for this) and the kernel wait of each live descendant."""
        waits = []
        for child in self.descendants:
            with contextlib.suppress(psutil.Error, OSError):
                wchan = Path(f"/proc/{child.pid}/wchan").read_text()
                waits.append(f"{child.pid} {child.status()} {child.cmdline()[:3]} {wchan}")
        self.process.send_signal(signal.SIGABRT)
        _, stderr = self.process.communicate(timeout=30)
        return "\n".join(["descendants:", *waits, "demo stderr:", stderr[-6000:]])

    def survivors(self) -> set[psutil.Process]:
        time.sleep(0.5)
        return {
            p for p in self.descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        }


def test_dev_runs_end_to_end_and_leaves_nothing_running(tmp_path: Path) -> None:
    demo = Demo("--events", "600", "--rate", "300", "--quiet", cwd=tmp_path)
    stdout, stderr = demo.wait(timeout_s=240)
    assert demo.process.returncode == 0, stderr[-2000:]
    assert demo.poll_children() >= 3, "broker, Redis and worker were never seen running"
    summary = json.loads(stdout.strip().splitlines()[-1])
    for key in (
        "events_produced",
        "events_rejected",
        "recommendations",
        "latency_ms_p50",
        "latency_ms_p99",
    ):
        assert key in summary
    assert summary["events_produced"] == 600
    # Every 100th record is malformed, so 6 land in the DLQ.
    assert summary["events_rejected"] == 6
    assert summary["recommendations"] == summary["events_accepted"]
    assert summary["events_accepted"] == 600 - 6 - summary["duplicates_sent"]
    assert 0 <= summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    assert demo.survivors() == set(), "the demo left processes behind"


def test_dev_with_variants_ends_with_the_experiment_report(tmp_path: Path) -> None:
    demo = Demo(
        "--variants", "popularity:1,covisit:1", "--events", "800", "--users", "40",
        "--rate", "400", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    stdout, stderr = demo.wait(timeout_s=240)
    assert demo.process.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    report = summary["experiment"]
    assert set(report["variants"]) == {"popularity", "covisit"}
    # Every accepted click but each user's first is scored, under one variant.
    scored = sum(arm["clicks_scored"] for arm in report["variants"].values())
    users = sum(arm["users"] for arm in report["variants"].values())
    assert scored == summary["events_accepted"] - users
    (difference,) = report["differences"].values()
    assert 0 < difference["hr_p"] <= 1
    assert demo.survivors() == set(), "the demo left processes behind"


def test_ctrl_c_stops_the_demo_and_everything_it_started(tmp_path: Path) -> None:
    demo = Demo("--events", "100000", "--rate", "200", "--quiet", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        # Wait until broker, Redis and the worker are up, then interrupt.
        while demo.poll_children() < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert demo.poll_children() >= 3, "the demo never started its services"
        time.sleep(2)
        demo.process.send_signal(signal.SIGINT)
        # Each child gets SIGTERM, then SIGKILL after its stop timeout (the worker's
        # graceful stop commits first): well under a minute on an idle machine, but a
        # CI machine loaded by the rest of the suite has taken longer than 60 s.
        try:
            _, stderr = demo.process.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not exit 150 s after Ctrl-C\n{demo.stacks()}")
    finally:
        if demo.process.poll() is None:
            demo.process.kill()
    assert demo.process.returncode == 130
    assert "Traceback" not in stderr
    assert demo.survivors() == set()


# Issue 14: the one line came after 17 s (no broker) and 7.9 s (wrong Redis port); the
# goal is 5 s (3.5 s measured on an idle machine). The bound is the connect timeout plus
# a second over the command's own start-up, timed alongside, so that a loaded machine
# (a slower interpreter start) does not fail it while a wait like the old one does.
SLACK_S = 1.0


def timed(*args: str, **kwargs: object) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = streamrec(*args, **kwargs)
    return done, time.monotonic() - start


@pytest.mark.parametrize(
    "command",
    [["produce", "--generate", "1"], ["consume", "--max", "1"], ["worker"]],
    ids=lambda c: c[0],
)
def test_unreachable_broker_is_one_line_naming_host_and_port(
    command: list[str], tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "STREAMREC_DATA_DIR": str(tmp_path)}
    _, start_up = timed(command[0], "--help", env=env)
    done, seconds = timed(*command, "--bootstrap-servers", f"127.0.0.1:{port}", env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"Kafka broker unreachable at 127.0.0.1:{port}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    bound = start_up + Settings().connect_timeout_s + SLACK_S
    assert seconds < bound, f"the error took {seconds:.1f} s (start-up {start_up:.1f} s)"


def test_unreachable_redis_stops_the_worker_with_one_line(
    dev_stack: DevStack, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "STREAMREC_DATA_DIR": str(tmp_path), "STREAMREC_APP_ID": "redisless"}
    done, seconds = timed(
        "worker",
        "--bootstrap-servers",
        dev_stack.bootstrap_servers,
        "--redis-url",
        f"redis://127.0.0.1:{port}/0",
        env=env,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"Redis unreachable at redis://127.0.0.1:{port}/0" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # A refused port answers at once: not even the connect timeout (3 s) is waited out.
    assert seconds < Settings().connect_timeout_s, f"the error took {seconds:.1f} s"


def test_bad_dataset_path_and_bad_setting_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tsv"
    done = streamrec("produce", "--file", str(missing))
    assert done.returncode == 1 and f"no dataset file at {missing}" in done.stderr
    done = streamrec("worker", env={**os.environ, "STREAMREC_TOP_K": "many"})
    assert done.returncode == 1
    assert "STREAMREC_TOP_K must be a whole number" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_misspelled_variable_warns_in_one_line_naming_the_setting() -> None:
    env = {**os.environ, "STREAMREC_BOOTSTRAP_SERVER": "kafka:9092", "STREAMREC_MODEL": "gru"}
    done = streamrec("worker", env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "unknown setting STREAMREC_BOOTSTRAP_SERVER ignored; "
        "did you mean STREAMREC_BOOTSTRAP_SERVERS?",
        "streamrec worker: error: STREAMREC_MODEL must be one of torch, popularity, covisit, "
        "not 'gru'",
    ]


def test_help_explains_every_command_and_setting() -> None:
    top = streamrec("--help")
    assert top.returncode == 0
    for command in ("worker", "produce", "consume", "dev"):
        assert command in top.stdout
    worker = streamrec("worker", "--help")
    assert "STREAMREC_BOOTSTRAP_SERVERS" in worker.stdout and "STREAMREC_WEB_HOST" in worker.stdout


def test_a_tampered_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "clicks.tsv"
    data.write_text(
        "SessionId\tItemId\tTime\n"
        + "".join(f"s{n}\ti{n % 7}\t{1_600_000_000 + n}\n" for n in range(50))
    )
    model_file = tmp_path / "model.safetensors"
    trained = streamrec(
        "train", "--data", str(data), "--model", "covisit", "--out", str(model_file), "--quiet"
    )
    assert trained.returncode == 0, trained.stderr
    raw = bytearray(model_file.read_bytes())
    raw[-1] ^= 0xFF
    model_file.write_bytes(bytes(raw))
    done = streamrec(
        "worker", "--checkpoint", str(model_file), "--bootstrap-servers", f"127.0.0.1:{free_port()}"
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert str(model_file) in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_evaluate_through_kafka_agrees_with_the_in_process_replay(tmp_path: Path) -> None:
    # Planted sessions (item i is followed by item i+1) streamed through the real
    # pipeline must score like the in-process replay of the same protocol.
    def sessions(prefix: str, count: int, start: int) -> str:
        rows = []
        for n in range(count):
            first = n % 9
            rows += [
                f"{prefix}{n}\ti{(first + step) % 12}\t{start + 10 * n + step}" for step in range(4)
            ]
        return "SessionId\tItemId\tTime\n" + "\n".join(rows) + "\n"

    (tmp_path / "x_train_full.txt").write_text(sessions("s", 120, 1_600_000_000))
    (tmp_path / "x_test.txt").write_text(sessions("t", 30, 1_600_100_000))
    done = streamrec(
        "evaluate",
        "--data",
        str(tmp_path / "x_train_full.txt"),
        "--protocol",
        "session-split",
        "--models",
        "covisit",
        "--through-kafka",
        "--json",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    models = json.loads(done.stdout)["models"]
    assert set(models) == {"covisit", "covisit@kafka"}
    assert models["covisit@kafka"]["predictions"] == models["covisit"]["predictions"] == 90
    assert models["covisit@kafka"]["HR@10"] == pytest.approx(models["covisit"]["HR@10"], abs=0.05)
    assert models["covisit"]["HR@10"] > 0.9


@pytest.mark.parametrize("protocol", ["last-out", "prequential"])
def test_last_out_and_prequential_through_kafka_agree_with_in_process(
    tmp_path: Path, protocol: str
) -> None:
    # Users walk a planted cycle (item i is followed by item i+1) four clicks long; the
    # held-out or next click is the cycle's next item, which covisit learns.
    rows = [
        f"u{n}\ti{(n % 9 + step) % 12}\t{1_600_000_000 + 10 * n + step}"
        for n in range(150)
        for step in range(4)
    ]
    data = tmp_path / "clicks.txt"
    data.write_text("SessionId\tItemId\tTime\n" + "\n".join(rows) + "\n")
    done = streamrec(
        "evaluate",
        "--data",
        str(data),
        "--protocol",
        protocol,
        "--models",
        "covisit",
        "--exclude",
        "history",
        "--through-kafka",
        "--json",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["exclude"] == "history"
    models = report["models"]
    live_rows = (
        {"covisit@kafka", "covisit@kafka-pull"} if protocol == "last-out" else {"covisit@kafka"}
    )
    assert set(models) == {"covisit", *live_rows}
    assert models["covisit"]["HR@10"] > 0.5
    if protocol == "prequential":
        # Live, a user's first click had no list before it, so it is not scored (in
        # process it is, against the cold-start list): 450 of 600 clicks.
        assert models["covisit@kafka"]["predictions"] == 450
        assert models["covisit@kafka"]["HR@10"] > 0.9
        return
    for row in live_rows:
        assert models[row]["predictions"] == models["covisit"]["predictions"] == 150
        assert models[row]["HR@10"] == pytest.approx(models["covisit"]["HR@10"], abs=0.1)


def test_produce_generate_twice_sends_fresh_event_ids_unless_seeded(
    dev_stack: DevStack,
) -> None:
    # Repeated ids would all be skipped by the worker as duplicates (issue 14).
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    ensure_topics(dev_stack.bootstrap_servers, [topic], partitions=1)

    sent: list[str] = []

    def produce(*flags: str) -> list[str]:
        done = streamrec(
            "produce", "--bootstrap-servers", dev_stack.bootstrap_servers, "--topic", topic,
            "--generate", "20", *flags,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        settings = Settings(bootstrap_servers=dev_stack.bootstrap_servers)
        records = read_topic(settings, topic, until=len(sent) + 20, timeout_s=10)
        new = [json.loads(r.value)["event_id"] for r in records][len(sent) :]
        sent.extend(new)
        return new

    first, second = produce(), produce()
    assert len(first) == len(second) == 20
    assert not set(first) & set(second)
    assert produce("--seed", "7") == produce("--seed", "7")


def test_an_unknown_topic_is_one_line_naming_it(dev_stack: DevStack) -> None:
    for command in (
        ["consume", "--topic", "no-such-topic", "--idle-timeout", "1"],
        ["produce", "--topic", "no-such-topic", "--generate", "1"],
    ):
        done = streamrec(*command, "--bootstrap-servers", dev_stack.bootstrap_servers)
        assert done.returncode == 1, command
        assert "Traceback" not in done.stderr
        assert (
            f"topic 'no-such-topic' does not exist at {dev_stack.bootstrap_servers}" in done.stderr
        )
