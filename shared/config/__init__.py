"""Settings: one registry of every setting, the loaders, App Configuration, the pool's entries."""
