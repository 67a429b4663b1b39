"""The key provider's health as Prometheus metrics, so an outage of Vault pages someone.

    custos_keys_ready{provider}                  1 when the provider can serve (its health()), else 0
    custos_keys_token_ttl_seconds{provider}      how long the backend token is still valid (absent:
                                                 it does not expire, or there is none)

Register a :class:`KeyHealthCollector` with the control plane's metrics registry; alert on
``custos_keys_ready == 0`` (a halt then records and refuses unwraps, but cannot suspend keys
until Vault is back) and on a token TTL falling towards zero.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily

from custos.controlplane.keys.base import KeyProvider

__all__ = ["KeyHealthCollector"]


class KeyHealthCollector:
    """A prometheus_client collector reading ``provider.health()`` at each scrape (cheap, non-blocking)."""

    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider

    def collect(self) -> Iterator[GaugeMetricFamily]:
        health = self.provider.health()
        kind = self.provider.kind
        ready = GaugeMetricFamily("custos_keys_ready", "1 when the key provider (Vault) can serve, else 0.",
                                  labels=["provider"])
        ready.add_metric([kind], 1.0 if health.ok else 0.0)
        yield ready
        ttl = GaugeMetricFamily("custos_keys_token_ttl_seconds",
                                "Seconds the key provider's token is still valid.", labels=["provider"])
        if health.token_ttl_s is not None:
            ttl.add_metric([kind], max(0.0, health.token_ttl_s))
        yield ttl
