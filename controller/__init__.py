"""slmops controller: fleet state, enrollment, telemetry, and (later) the model pipeline."""

__version__ = "0.1.0"
