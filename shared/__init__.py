"""The app's core; ``function_app.py`` maps the triggers onto it.

- ``config/``: settings (one registry of every setting), App Configuration, the pool's entries.
- ``contract/``: request bodies and their validation, response shapes.
- ``upstream/``: the client, its pool, retries, the transport, credentials and tokens.
- ``telemetry/``: the hooks every component calls, and the OpenTelemetry pipeline behind them.
- ``service``: the pipeline every trigger shares; ``events``: queue and Event Grid answers;
  ``outcome``, ``errors``, ``logs``, ``clock``, ``backoff``: what they all use.
"""
