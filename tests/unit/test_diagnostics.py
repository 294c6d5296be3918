"""The SIGUSR1 dump names the line each suspended coroutine of ours waits at, and what
it awaits, through the async generators and awaitables a task's own stack hides."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap

from stream.worker import diagnostics


def test_suspended_frames_reach_inside_async_generators() -> None:
    gate = asyncio.Event()

    async def waits_on_gate() -> None:
        await gate.wait()

    async def feed():  # type: ignore[no-untyped-def]
        while True:
            await waits_on_gate()
            yield 1

    async def consume() -> None:
        async for _ in feed():
            pass

    async def main() -> list[tuple[str, str]]:
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        try:
            return list(diagnostics.suspended_frames(("test_diagnostics",)))
        finally:
            task.cancel()

    rows = asyncio.run(main())
    names = {where.rsplit(" in ", 1)[1] for where, _ in rows}
    assert {"consume", "feed", "waits_on_gate"} <= names
    awaited = dict((where.rsplit(" in ", 1)[1], what) for where, what in rows)
    assert "Event.wait" in awaited["waits_on_gate"]
    assert "waits_on_gate" in awaited["feed"]


def test_registered_state_is_dumped_and_a_failing_snapshot_does_not_raise() -> None:
    diagnostics.register_state("test-ok", lambda: {"partitions": {"clicks[0]": 7}})

    def broken() -> dict[str, int]:
        raise RuntimeError("boom")

    diagnostics.register_state("test-broken", broken)
    out = io.StringIO()
    try:
        diagnostics.dump_state(out)
    finally:
        diagnostics._STATE.pop("test-ok")
        diagnostics._STATE.pop("test-broken")
    text = out.getvalue()
    assert '"clicks[0]": 7' in text
    assert "test-broken\nunavailable: RuntimeError('boom')" in text


def test_sigusr1_before_the_event_loop_dumps_instead_of_killing() -> None:
    # SIGUSR1's default action ends a process; a worker still starting must survive it.
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        from stream.worker import diagnostics
        diagnostics.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.2)
        print("still running")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert done.returncode == 0, done.stderr
    assert "still running" in done.stdout
    assert "=== streamrec: thread stacks" in done.stderr
    assert "=== end of streamrec dump" in done.stderr
