"""Command-line helpers for the queues ``make run`` serves: ``python -m devserver.tools.enqueue`` and
``python -m devserver.tools.results`` (``make enqueue`` / ``make results``)."""
