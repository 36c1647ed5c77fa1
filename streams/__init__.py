"""Kafka shells around the pure stages: topics, codec, hop stamping, the batch runner, workers and the CLI."""
