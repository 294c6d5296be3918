"""What a stalled worker is waiting on: `kill -USR1 <worker pid>` writes it to stderr.

mode's worker (under Faust) answers SIGUSR1 with every thread's stack and every task's
stack with its local variables (megabytes for a worker with a table), and a task's
stack stops at the first object it awaits that is not a plain coroutine: an agent's
task shows only `await coro` in Agent._execute_actor, and an `async for` over an async
generator hides the generator. So the dump here lists every suspended coroutine and
async generator in the process whose code is streamrec's, Faust's, mode's or
aiokafka's, with the line it is suspended at and what
it awaits: a stall shows up as the line that never moves between two dumps. Parts of
the worker can add a snapshot of their state (`register_state`), printed first.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import signal
import sys
import types
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TextIO

# Named callables returning a JSON-able snapshot of some part of the worker.
_STATE: dict[str, Callable[[], Any]] = {}


def register_state(name: str, snapshot: Callable[[], Any]) -> None:
    """Include `snapshot()` in every dump under `name` (the last one registered wins)."""
    _STATE[name] = snapshot


def dump_state(out: TextIO) -> None:
    for name, snapshot in _STATE.items():
        try:
            text = json.dumps(snapshot(), indent=1, default=repr)
        except Exception as exc:  # a dump must never take the worker down
            text = f"unavailable: {exc!r}"
        out.write(f"=== streamrec state: {name}\n{text}\n")


# Source folders whose suspended frames are listed (the rest is asyncio and the like).
WATCHED = ("/stream/", "/model/", "/serving/", "/faust/", "/mode/", "/aiokafka/")


def _frame_of(obj: Any) -> FrameType | None:
    # type(), not isinstance(): some objects gc holds (torch's deprecated reduce_op)
    # warn when their __class__ is read.
    kind = type(obj)
    if kind is types.CoroutineType:
        return obj.cr_frame
    if kind is types.AsyncGeneratorType:
        return obj.ag_frame
    if kind is types.GeneratorType:
        return obj.gi_frame
    return None


def _awaiting(obj: Any) -> Any:
    for attribute in ("cr_await", "ag_await", "gi_yieldfrom"):
        if hasattr(obj, attribute):
            return getattr(obj, attribute)
    return None


def suspended_frames(watched: tuple[str, ...] = WATCHED) -> Iterator[tuple[str, str]]:
    """(where, what it awaits) for each suspended coroutine, async generator or
    generator whose code lives under one of `watched`, sorted by place."""
    found = []
    for obj in gc.get_objects():
        frame = _frame_of(obj)
        if frame is None:
            continue
        filename = frame.f_code.co_filename
        if not any(part in filename for part in watched):
            continue
        where = f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        found.append((where, repr(_awaiting(obj))[:200]))
    return iter(sorted(found))


def dump_suspended(out: TextIO | None = None) -> int:
    """Write `suspended_frames` to `out` (stderr by default); returns how many."""
    out = out or sys.stderr
    rows = list(suspended_frames())
    out.write(f"=== streamrec: {len(rows)} suspended coroutines and generators\n")
    for where, awaiting in rows:
        out.write(f"  {where}\n      awaits {awaiting}\n")
    out.write("=== end of streamrec dump\n")
    out.flush()
    return len(rows)


def dump(out: TextIO | None = None) -> None:
    """Every thread's stack, the registered state snapshots, then `dump_suspended`."""
    out = out or sys.stderr
    dump_state(out)
    out.write("=== streamrec: thread stacks\n")
    out.flush()
    faulthandler.dump_traceback(file=out, all_threads=True)
    dump_suspended(out)


def install() -> None:
    """Dump on SIGUSR1 from now on. Its default action ends the process, and a worker
    takes seconds to start: a dump asked for too early must not kill it. Faust's worker
    later answers the signal on its event loop, where `DiagnosingWorker` dumps."""
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda *_: dump())
