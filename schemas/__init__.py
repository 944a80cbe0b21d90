"""driftline event contracts: JSON Schemas, typed messages and fast codecs."""
