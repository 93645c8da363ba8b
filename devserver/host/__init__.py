"""The dev host: serves the app's functions as the Functions host does (``python -m devserver``;
see docs/dev-host.md). ``host.py`` wires the rest together."""
