"""A worker at log level warning does not build a record for every debug line of its
libraries (Faust's spinner set the root logger to DEBUG: 7% of a worker's CPU)."""

from __future__ import annotations

import io
import logging

from stream.kafka.transport import streamrec_app
from stream.worker.process import StreamrecWorker


def test_warning_level_leaves_library_debug_lines_disabled() -> None:
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        app = streamrec_app(
            "tlog",
            fetch_max_wait_ms=10,
            broker="kafka://127.0.0.1:1",
            store="memory://",
            autodiscover=False,
        )
        worker = StreamrecWorker(
            app, loglevel="warning", quiet=True, stdout=io.StringIO(), stderr=io.StringIO()
        )
        worker._setup_logging()
        assert root.level == logging.WARNING
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
        assert worker.spinner is None
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
