"""Kafka clients (topics, producer, consumer) and every correction streamrec makes to
Faust, aiokafka, kafka-python or the embedded broker.

Modules: `topics`, `producer`, `consumer` (kafka-python clients for commands and the
demo); `batch_send` (the worker's records as one aiokafka batch per partition);
`transport` (Faust's aiokafka transport with corrections K1-K6 and K9, numbered
as in its header); `record_order`, `fetch_wait` and `slow_streams` (the pure
bookkeeping of K4, K5 and K9); `internals` (the only module here that reads or writes
private names of faust, mode and aiokafka). The broker facts cited below are in
docs/embedded-broker.md, "Tansu" there.

Private hooks overridden (they cannot move to `internals`; re-read them when a pin
moves): on faust's AIOKafkaConsumerThread `_create_worker_consumer` (K1),
`_fetch_records` (K5), `_highwaters` (K3), `_log_slow_processing_stream` (K9); on
faust's aiokafka Consumer `_new_offset` (K2) and `_new_consumer_thread`; on faust.App
`_new_transport` (both only install the classes above); on mode's Worker `_cry` (P2,
`internals.Sigusr1Worker`).

Corrections
-----------
One entry per correction of a library or of the broker. Fields: `fixes` (the symptom
without it), `cause` (the upstream issue or broker limit), `checked` (the versions it
was checked on; the pins in pyproject.toml hold them), `where` (module:name; a private
hook it overrides is marked "hook"), `test` (what fails if it goes). Entries outside
stream/kafka/ name their current location. The entries' `where` and `test` fields are
checked by tests/regression/test_corrections_table.py.

K1  The consumer's fetch wait is a setting (STREAMREC_FETCH_MAX_WAIT_MS)
    fixes:   0.4-1.5 s added to every click's latency
    cause:   faust hard-codes fetch_max_wait_ms=1500; Tansu answers a fetch only when its
             wait ends (docs/embedded-broker.md, "Fetches wait out their wait")
    checked: faust-streaming 0.15.3, aiokafka 0.14.0, Tansu 0.6.0
    where:   stream/kafka/transport.py:StreamrecConsumerThread (hook
             _create_worker_consumer), stream/kafka/internals.py:set_initial_fetch_wait
    test:    tests/unit/test_settings.py, tests/integration/test_pipeline.py
K2  A commit covers only records acknowledged after processing, from the committed
    offset on, and never passes a record still in flight
    fixes:   clicks lost: committed past while skipped during a rebalance (4-74 of 1,500
             per run) or while slow at a partition's head
    cause:   faust-streaming issue 606 (open; commits past a slow head record); faust
             streams ack the records they skip during a rebalance
    checked: faust-streaming 0.15.3
    where:   stream/kafka/transport.py:StreamrecConsumer (ack, hook _new_offset),
             stream/kafka/internals.py:forget_acked_below
    test:    tests/regression/test_faust_606_slow_head_not_committed_past.py,
             tests/integration/test_rebalance.py
K3  Table recovery reads each changelog partition to its true end
    fixes:   a new owner applying later clicks to older user records (5 of 3,000 lost)
    cause:   Tansu: ListOffsets(latest) reports the last batch's base offset plus one
    checked: faust-streaming 0.15.3, aiokafka 0.14.0, Tansu 0.6.0
    where:   stream/kafka/transport.py:StreamrecConsumerThread (hook _highwaters),
             stream/kafka/transport.py:true_end_offsets
    test:    tests/regression/test_changelog_end_offsets_under_reported.py,
             tests/integration/test_faults.py
K4  Agents get each partition's records in order, none skipped
    fixes:   records re-fetched after a rebalance's seek left unprocessed until the next
             restart (18 of 3,000 after two SIGKILLs)
    cause:   faust drops records below its read offset, which records fetched before
             the seek raise again; faust skips buffered records during a rebalance
    checked: faust-streaming 0.15.3
    where:   stream/kafka/transport.py:StreamrecConsumer (admit, reseek_stalled,
             perform_seek), stream/kafka/record_order.py:RecordOrder
    test:    tests/regression/test_rebalance_refetched_records_not_dropped.py,
             tests/unit/test_record_order.py, tests/integration/test_faults.py
K5  The fetch wait grows while partitions are behind and fetches come back empty
    fixes:   a worker that fell behind never caught up (16-25k clicks per partition
             unread in `make chaos`)
    cause:   Tansu gives up on a fetch when its wait ends, before reading records far
             behind the end of a partition of many small batches
    checked: aiokafka 0.14.0, Tansu 0.6.0
    where:   stream/kafka/transport.py:StreamrecConsumerThread (hook _fetch_records),
             stream/kafka/fetch_wait.py:adapt_fetch_wait
    test:    tests/regression/test_fetch_wait_grows_on_a_starved_partition.py,
             tests/unit/test_fetch_wait.py
K6  A recovery seek with no start offset reads from the start
    fixes:   a worker crash (aiokafka's seek raised ValueError; once in 10 kills)
    cause:   faust's recovery seeks partitions a mid-recovery rebalance added to None
    checked: faust-streaming 0.15.3, aiokafka 0.14.0
    where:   stream/kafka/transport.py:StreamrecConsumer (seek_wait)
    test:    tests/regression/test_recovery_seek_without_start_offset.py
K7  Every topic is created up front with the configured partition count
    fixes:   faust crashing at assignment with PartitionsMismatch
    cause:   Tansu auto-creates topics with 4 partitions; faust needs a source topic and
             its table's changelog to match
    checked: faust-streaming 0.15.3, kafka-python 3.0.12, Tansu 0.6.0
    where:   stream/kafka/topics.py:ensure_topics
    test:    tests/regression/test_topics_created_with_one_partition_count.py
K8  Topic configs are read back with every source and no key filter
    fixes:   the start check refusing every state topic the worker created compacted
             (its configs read back empty)
    cause:   Tansu reports a topic's configs with source DEFAULT_CONFIG, which
             kafka-python's default describe filter ("modified") drops, and drops the
             connection on a DescribeConfigs that names keys
    checked: kafka-python 3.0.12, Tansu 0.6.0
    where:   stream/kafka/topics.py:read_topic_configs
    test:    tests/regression/test_topic_configs_reported_as_defaults.py,
             tests/integration/test_topic_configs.py
K9  A partition behind while the worker works through a backlog elsewhere is one
    WARNING with the records waiting, not an ERROR at every check
    fixes:   187 ERROR lines "Stream stopped processing, or is slow" for item-delta
             partitions while every click was processed (issue 17)
    cause:   faust's stream check logs an ERROR every few seconds for any partition
             whose stream took no record for stream_processing_timeout while records
             wait, however busy the worker is on its other partitions
    checked: faust-streaming 0.15.3
    where:   stream/kafka/transport.py:StreamrecConsumerThread (hook
             _log_slow_processing_stream), stream/kafka/slow_streams.py:SlowStreams
    test:    tests/regression/test_faust_slow_stream_backlog_is_one_warning.py
W1  Faust's recovery consistency check is off (`recovery_consistency_check=False`)
    fixes:   healthy workers crashing in rebalances ("persisted offset ... is higher
             than the last offset in that topic (2758 > 2757)")
    cause:   Tansu under-reports end offsets (as K3); with the in-memory store the check
             compares only those
    checked: faust-streaming 0.15.3, Tansu 0.6.0
    where:   stream/worker/app.py:make_app
    test:    tests/integration/test_faults.py
W2  Short consumer-group timeouts (session 10 s, rebalance 6 s, heartbeat 1 s)
    fixes:   every start or failover waiting 20-30 s
    cause:   Tansu holds a group join for about half the session timeout
    checked: faust-streaming 0.15.3, Tansu 0.6.0
    where:   stream/worker/app.py:make_app
    test:    tests/integration/test_rebalance.py
W3  Events buffered from an older consumer generation are neither applied nor acked
    fixes:   commits past clicks never applied, after a rebalance reset faust's per-
             partition offsets while events fetched before it sat in the stream
    cause:   faust keeps handing on buffered events after a rebalance
    checked: faust-streaming 0.15.3
    where:   stream/worker/agents.py:in_order_batches
    test:    tests/integration/test_rebalance.py
W4  Batches are acknowledged after the loop body that got them (as `noack_take`)
    fixes:   a worker stopped mid-batch committing clicks it never applied
    cause:   faust's `take_events` acks a batch in a `finally`
    checked: faust-streaming 0.15.3
    where:   stream/worker/agents.py:in_order_batches
    test:    tests/integration/test_rebalance.py
W5  Consumer lag from fetch responses' high watermarks, not ListOffsets
    fixes:   a wrong consumer_lag metric
    cause:   Tansu under-reports ListOffsets (as K3)
    checked: faust-streaming 0.15.3, Tansu 0.6.0
    where:   stream/worker/housekeeping.py:Housekeeping.report_state (the read
             offsets through stream/kafka/internals.py:read_offsets)
    test:    none directly (the metric is exported in tests/integration/test_pipeline.py)
W6  The web server binds STREAMREC_WEB_HOST, and table views are off
    fixes:   a worker serving its web app, table state included, on every interface
    cause:   `faust worker` binds 0.0.0.0:6066 by default, even with web_enabled=False
    checked: faust-streaming 0.15.3
    where:   stream/worker/app.py:make_app (web_bind, web_tables_enabled)
    test:    tests/unit/test_deploy.py
W7  Batches take what is ready: natural batching over faust's stream (`take_ready`)
    fixes:   batches of ~10 clicks under a backlog of thousands, so the model's batch
             step ran no faster than one click at a time (mean batch 10 -> 89-135 in
             bench/worker_cost.py, torch, batch step); and, with the gathering for as
             long as the previous batch took that fixed it, clicks under moderate load
             waiting a whole extra batch time (bench/latency.py at 500 clicks/s: p50
             102-108 -> 47-58 ms)
    cause:   faust's fetcher hands the stream one record per event-loop iteration
             and not at all while a batch holds the loop; `noack_take` then waits only
             its fixed `within` (2 ms) per batch
    checked: faust-streaming 0.15.3, aiokafka 0.14.0
    where:   stream/kafka/take.py:take_ready (faust's take, with its private
             `_enable_passive`, `_processors` and the channel's queue; the consumer's
             `highwater`), used by stream/worker/agents.py:in_order_batches
    test:    tests/unit/test_take_ready.py; every integration test's worker batches
P1  Faust's progress spinner is off
    fixes:   7% of a worker's CPU spent formatting dropped debug records
    cause:   for its spinner faust sets the root logger to DEBUG
    checked: faust-streaming 0.15.3, mode-streaming 0.7.1
    where:   stream/worker/process.py:StreamrecWorker (on_setup_root_logger)
    test:    tests/unit/test_worker_logging.py
P2  SIGUSR1 dumps streamrec's diagnostics instead of mode's task stacks
    fixes:   (a diagnostic, not a defect) no fetch or commit state in mode's dump
    cause:   mode's Worker runs its private `_cry` on SIGUSR1
    checked: mode-streaming 0.7.1
    where:   stream/kafka/internals.py:Sigusr1Worker (hook _cry), overridden by
             stream/worker/process.py:StreamrecWorker.on_sigusr1
    test:    tests/unit/test_diagnostics.py
P3  A batch's recommendations and user records go out as one record batch per partition
    fixes:   (a cost, not a defect) a producer future and its callbacks per
             recommendation, and faust's send_soon buffer per user record: 236 -> 134 us
             of worker CPU per click with the popularity model (bench/worker_cost.py)
    cause:   faust sends and changelogs one record at a time
    checked: faust-streaming 0.15.3, aiokafka 0.14.0
    where:   stream/kafka/batch_send.py:KeyedBatchSender (aiokafka's public
             create_batch/send_batch on faust's producer, through
             stream/kafka/internals.py:aiokafka_producer),
             stream/kafka/batch_send.py:ChangelogBatchWriter (the table's store and
             changelog written without faust's per-key `on_key_set`)
    test:    tests/integration/test_batch_send.py, tests/integration/test_replay.py,
             tests/integration/test_memory.py, tests/integration/test_faults.py
S1  kafka-python's admin client log hides SASL and TLS key passwords
    fixes:   the SASL password written to logs at DEBUG level
    cause:   kafka-python's admin client logs its whole configuration at DEBUG
    checked: kafka-python 3.0.12
    where:   stream/security.py:hide_client_secrets
    test:    tests/unit/test_security.py
I1  The item-vector follower is caught up by fetch high watermarks, not ListOffsets
    fixes:   clicks released before the index was rebuilt
    cause:   Tansu under-reports ListOffsets (as K3)
    checked: aiokafka 0.14.0, Tansu 0.6.0
    where:   stream/kafka/follower.py:TopicFollower (stream/items/sync.py:VectorFollower)
    test:    tests/regression/test_fetch_wait_grows_on_a_starved_partition.py
D1  The audit reads a topic until it has been silent, not to its reported end
    fixes:   a fault run judged on a partial read of its output
    cause:   Tansu under-reports end offsets (as K3)
    checked: kafka-python 3.0.12, Tansu 0.6.0
    where:   stream/dev/audit.py
    test:    tests/integration/test_faults.py
"""
