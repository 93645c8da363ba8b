"""The app's telemetry recorded in memory: OTelTelemetry over an in-memory span exporter and metric
reader (never the global providers), for the tests that read what it recorded."""

from __future__ import annotations

import json

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.telemetry.otel import OTelTelemetry


class Recorded:
    """OTelTelemetry over an in-memory span exporter and metric reader (not the global providers)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[self.reader])
        self.telemetry = OTelTelemetry(tracer_provider, meter_provider, owned=(tracer_provider, meter_provider))

    def spans(self, name_prefix: str = "") -> list:
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(name_prefix)]

    def points(self, name: str) -> list:
        self.telemetry.drain()  # the measurements the metrics thread has not recorded yet
        data = self.reader.get_metrics_data()
        return [point for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics
                for metric in sm.metrics if metric.name == name for point in metric.data.data_points]

    def total(self, name: str, **attributes) -> float:
        """The sum (histograms) or value (counters) of ``name``'s points whose attributes include these."""
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        return sum(getattr(p, "sum", None) if hasattr(p, "bucket_counts") else p.value
                   for p in self.points(name) if wanted.items() <= dict(p.attributes).items())

    def count(self, name: str, **attributes) -> int:
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        return sum(p.count for p in self.points(name) if wanted.items() <= dict(p.attributes).items())

    def exported_text(self) -> str:
        """Everything exported, as text: span names, attributes, events, status; metric attributes."""
        parts = []
        for span in self.exporter.get_finished_spans():
            parts += [span.name, json.dumps(dict(span.attributes or {})), str(span.status.description)]
            parts += [f"{e.name} {json.dumps(dict(e.attributes or {}))}" for e in span.events]
        self.telemetry.drain()
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            parts.append(json.dumps(dict(rm.resource.attributes)))
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    parts += [metric.name] + [json.dumps(dict(p.attributes)) for p in metric.data.data_points]
        return "\n".join(parts)
