"""The Azure stand-ins (see docs/stand-ins.md): Azure OpenAI (``azure_openai``), the managed-identity
endpoint (``identity``), App Configuration and Key Vault (``appconfig``, ``keyvault``), an OTLP
receiver (``otlp_receiver``), their control API (``control``, ``control_client``, ``faults``) and the
runner that starts them (``runner``: ``Emulators``, ``EmulatorProcess``; ``python -m devserver.emulators``)."""

from .runner import DEFAULT_DEPLOYMENT, DEFAULT_DEPLOYMENTS, EmulatorProcess, Emulators, main

__all__ = ["Emulators", "EmulatorProcess", "DEFAULT_DEPLOYMENT", "DEFAULT_DEPLOYMENTS", "main"]
