#!/usr/bin/env python3
"""The stack's own limit for ingestion: a gRPC server that does nothing Custos does.

Serves ``/custos.v1.Custody/Stream`` on the same TLS (the dev server's certificate, client
certificates required, from the same CA), the same server options and event loop (uvloop) as
the control plane: a stream's first message is a lease, a heartbeat is answered with a lease and
an inventory with a receipt, each of bytes serialized once — no guard, Store, lease, index,
rule or audit. bench/ingest_bench.py runs its rounds against this too and prints Custos's rate
as a ratio of this one's.

    python bench/ingest_raw.py --listen 127.0.0.1:PORT --ca CA --cert CERT --key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from custos.controlplane.server import GRPC_OPTIONS, run_loop
from custos.v1 import custody_pb2

LEASE = custody_pb2.ControlMessage(lease=custody_pb2.Lease(expires_unix_ns=1 << 62, ttl_seconds=30)).SerializeToString()
RECEIPT = custody_pb2.ControlMessage(report=custody_pb2.ReportReceipt(copies=5, alerts=0)).SerializeToString()


async def stream(requests: Any, ctx: grpc.aio.ServicerContext) -> None:
    await ctx.write(LEASE)
    while (msg := await ctx.read()) is not grpc.aio.EOF:
        kind = custody_pb2.AgentMessage.FromString(msg).WhichOneof("msg")  # the decode Custos does too
        if kind == "inventory":
            await ctx.write(RECEIPT)
        elif kind == "heartbeat":
            await ctx.write(LEASE)


async def serve(ns: argparse.Namespace) -> None:
    server = grpc.aio.server(options=GRPC_OPTIONS)
    handler = grpc.stream_stream_rpc_method_handler(stream, request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("custos.v1.Custody", {"Stream": handler}),))
    creds = grpc.ssl_server_credentials([(Path(ns.key).read_bytes(), Path(ns.cert).read_bytes())],
                                        root_certificates=Path(ns.ca).read_bytes(), require_client_auth=True)
    server.add_secure_port(ns.listen, creds)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("serving", flush=True)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ns = ap.parse_args()
    run_loop(serve(ns))


if __name__ == "__main__":
    main()
