"""driftline stream layer: Kafka workers, producer SDK, subscriber, metrics, CLI."""
