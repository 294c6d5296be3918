"""What `streamrec dev`, the tests and the benchmarks share: the embedded broker and Redis
server, a worker-process harness, a restartable worker group, synthetic streams, and the
audit that judges a run. Not imported by the worker itself."""
