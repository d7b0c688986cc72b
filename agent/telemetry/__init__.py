"""Telemetry on the device: what is measured, how it is sampled, and the on-disk spool."""
