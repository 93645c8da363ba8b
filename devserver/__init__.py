"""Dev-only tools, never deployed: ``host/`` (the local Functions host, ``python -m devserver``),
``emulators/`` (the Azure stand-ins, ``python -m devserver.emulators``) and ``tools/`` (the sample
queue producer and results reader)."""
