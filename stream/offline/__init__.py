"""Learning and scoring outside the worker: `streamrec train`, `streamrec evaluate`, the
dataset readers and the reports."""
