"""Faust tables: state the stream keeps, backed by a compacted changelog topic in Kafka."""
