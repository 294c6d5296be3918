"""Kafka clients (topics, producer, consumer) and every correction streamrec makes to
Faust, aiokafka or the embedded broker."""
