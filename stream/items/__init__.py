"""The item-vector ownership protocol: one writer per item, every worker a reader.

A click is applied by the worker that owns its *user*, and the model there changes the
clicked items' vectors at once (so that user's next recommendation reflects it). The
*item* vectors, though, must have one writer each and be the same in every worker:

    user's worker --(summed deltas, every batch)--> {app_id}-item-deltas, partition of
        the item id --[own_items agent on the owning worker: ItemLedger.apply]-->
        Redis (compare-and-set by version) and {app_id}-item-vectors
    {app_id}-item-vectors --(every partition, no consumer group, from the beginning)-->
        every worker: ItemLedger.observe -> model and FAISS index

1. The user's worker records each click's change to an item vector as a delta
   (`DeltaTracker.record`), tagged with where the click was read (its input
   topic-partition, the *source*, and offset), and sends the deltas of a batch of
   clicks to each item's owner: the worker owning the item id's partition.
2. The owner adds each delta to the item's canonical vector exactly once
   (`ItemLedger.apply`: it remembers, per item, the last offset applied from each
   source, so a click replayed after a crash is skipped), gives it a new version,
   writes Redis and broadcasts the vector, with that per-source map, to every worker.
3. Every worker keeps the canonical vectors it hears (`ItemLedger.observe`) and copies
   one into its model and index when it has no change of its own still on the way for
   that item (`DeltaTracker.may_overwrite`); otherwise a later broadcast, which includes
   its change, will do. Once the stream drains, every worker holds the owner's vectors.

Deltas add, so concurrent learning on one item from two workers is summed, never lost
to a last-writer-wins race. Offsets only work as an idempotence key because one source
partition is applied by one worker at a time, in order, and a click's deltas are made
durable before the click's user state is (stream/worker/applier.py).

An item-deltas record carries many items (all the deltas bound for one partition in
one batch), so its message count follows batches, not clicks. An item-vectors record
carries one item, keyed by its id: that topic is compacted, so it keeps each item's
last vector however long the stream runs (issue 14). Reading `item-vectors` from the
start is also how a fresh worker, or one whose index is empty, rebuilds the live item
vectors on top of its checkpoint.

Where each part lives: `ledger.py` the bookkeeping (pure, no I/O), `sync.py` the wire
codec and the follower of the item-vectors topic, stream/worker/item_owner.py the
worker's side (sending deltas, owning partitions, following).
"""
