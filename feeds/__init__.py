"""Outbound feeds that follow the log: the Kafka publisher."""
