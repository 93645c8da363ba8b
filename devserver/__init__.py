"""Dev-only tools: Azure stand-ins (emulators) and a local Functions host. Never deployed."""
