"""driftline drift detection engine: pure numpy/river, never Kafka or Faust."""
