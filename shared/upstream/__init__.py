"""Calling Azure OpenAI: the client, the backend pool, retries, the transport, credentials and tokens."""
