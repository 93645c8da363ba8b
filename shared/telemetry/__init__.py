"""Telemetry: the hooks the app calls (``hooks``), its switches, and the OpenTelemetry implementation."""
