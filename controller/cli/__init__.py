"""The operator's command line, `slmops`."""
