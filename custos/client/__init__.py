"""The client library: what the CLI, the agent and the console call to talk to the control plane."""

from custos.client.connection import ClientConfig

__all__ = ["ClientConfig"]
