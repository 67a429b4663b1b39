"""The client library: what the CLI, the agent and the console call to talk to the control plane.

:class:`Client` (:mod:`.session`) is one session; the operations are functions by noun:
:mod:`.registry`, :mod:`.push`, :mod:`.pull`, :mod:`.orders`, :mod:`.signersets`,
:mod:`.hosts`, :mod:`.incidents`, :mod:`.audit`. :mod:`.transfer` is the byte-level
encryption and decryption beneath push and pull.
"""

from custos.client.connection import ClientConfig
from custos.client.session import Client

__all__ = ["Client", "ClientConfig"]
