"""Kafka transport of the pipeline: producers/consumers with retry and DLQ, and the service loop."""
