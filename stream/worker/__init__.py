"""One worker process: the Faust app, its agents, and the per-click pipeline they drive.

`process.build_worker` checks the model, topics and Redis, then `app.create_worker`
wires the parts; `process.run_worker` runs Faust's loop until SIGINT/SIGTERM.

The parts, in the order a click meets them: `agents` (the Faust agents), `applier`
(a batch's commit order), `pipeline` (one click through the model), `users` (the user
table and its eviction), `item_owner` (this worker's side of stream/items/),
`publisher` (vectors to Redis), `housekeeping` (tasks, timers, rebalances), `views`."""
