"""Telemetry on the controller side: turning stored raw points into what a query asks for."""
