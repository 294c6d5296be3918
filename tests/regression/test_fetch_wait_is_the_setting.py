"""The worker's aiokafka consumer waits at most STREAMREC_FETCH_MAX_WAIT_MS per fetch
(stream/kafka/transport.py, correction 1). faust-streaming 0.15.3 hard-codes
fetch_max_wait_ms=1500, and the embedded broker answers a fetch only when its wait ends
(docs/embedded-broker.md), which put 0.4-1.5 s into every click's latency."""

from __future__ import annotations

import asyncio

from stream.kafka import internals
from stream.kafka.transport import streamrec_app


def test_the_consumer_is_built_with_the_configured_fetch_wait() -> None:
    async def main() -> tuple[int, int]:
        app = streamrec_app(
            "tfetchwait",
            fetch_max_wait_ms=17,
            broker="kafka://127.0.0.1:1",
            store="memory://",
            autodiscover=False,
        )
        thread = internals.consumer_thread(app.consumer)
        consumer = thread._create_worker_consumer(app.transport)  # built, not started
        try:
            return consumer._fetch_max_wait_ms, thread.fetch_wait.base_ms
        finally:
            await consumer.stop()

    initial_wait_ms, adaptive_base_ms = asyncio.run(main())
    assert initial_wait_ms == 17  # stock faust-streaming: 1500
    assert adaptive_base_ms == 17  # correction 5 relaxes back to the setting
