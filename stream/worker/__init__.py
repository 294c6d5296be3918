"""One worker process: the Faust app, its agents, and the per-click pipeline they drive.

`process.build_worker` checks the model, topics and Redis, then `app.create_worker`
wires the parts; `process.run_worker` runs Faust's loop until SIGINT/SIGTERM."""
