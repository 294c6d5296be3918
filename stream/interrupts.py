"""Ctrl-C that is never lost in the CLI's long loops (a Python workaround).

Python turns SIGINT into a KeyboardInterrupt raised in the main thread at whatever
bytecode runs next. When that is inside a `__del__` method or another callback whose
exceptions Python reports and ignores, the interrupt is gone: the signal module's
documentation says so ("Note on Signal Handlers and Exceptions", bpo-42340). Under the
full test suite `streamrec dev` sometimes lost its Ctrl-C, most likely that way
(`test_ctrl_c_stops_the_demo_and_everything_it_started`): 150 s after SIGINT its main
thread was still pacing clicks in `replay`, and the broker, Redis and worker it had
started were still running; the unit test reproduces that loss with a finaliser.

`install()` (the CLI does it for every command but `worker`, whose Faust loop handles
its own signals) keeps the KeyboardInterrupt and also records the signal, and the long
loops call `raise_if_interrupted()`, so an interrupt that was swallowed is raised again
at the loop's next step. Tested in tests/unit/test_interrupts.py.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_interrupted = threading.Event()


def install() -> None:
    """Handle SIGINT as Python does, and remember it. Main thread only (a no-op
    elsewhere: only the main thread may set signal handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if SIGINT arrived since `install()`, even if the one raised
    then was swallowed."""
    if _interrupted.is_set():
        raise KeyboardInterrupt
