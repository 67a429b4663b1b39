"""The drill register, client side: show, prepare the next version, sign, install.

Signers sign the register's canonical bytes as :class:`DrillRegister` decodes them,
never a server summary: :func:`prepare` returns the decoded body so the CLI prints
exactly what is signed.
"""

from __future__ import annotations

from collections.abc import Sequence

from custos.client.session import Client
from custos.core.drills import DrillRegister
from custos.core.signers import Signature, encode_signatures
from custos.v1 import orders_pb2


def get_register(client: Client) -> orders_pb2.DrillRegisterInfo:
    """The installed drill register (``body`` empty when none is installed)."""
    return client.call(client.orders.GetDrillRegister, orders_pb2.GetDrillRegisterRequest(),
                       orders_pb2.DrillRegisterInfo)


def prepare(client: Client, *, add: Sequence[str], remove: Sequence[str]) -> DrillRegister:
    """The next register as the server proposes it, decoded (what is signed). Raises InvalidInput."""
    info = client.call(client.orders.PrepareDrillRegister,
                       orders_pb2.PrepareDrillRegisterRequest(add_models=list(add), remove_models=list(remove)),
                       orders_pb2.DrillRegisterInfo)
    return DrillRegister.decode(info.body)


def install(client: Client, register: DrillRegister, signatures: Sequence[Signature]) -> orders_pb2.DrillRegisterInfo:
    """Install a signed register (a rotate threshold of the current signer set)."""
    req = orders_pb2.SetDrillRegisterRequest(body=register.encode(), signatures=encode_signatures(signatures))
    return client.call(client.orders.SetDrillRegister, req, orders_pb2.DrillRegisterInfo)
