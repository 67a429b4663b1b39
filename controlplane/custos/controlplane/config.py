"""Control-plane configuration: a TOML file, overridden by flags.

Example (deploy/controlplane.example.toml):

    listen = "0.0.0.0:7443"
    [tls]   ca_file = ..., cert_file = ..., key_file = ...
    [store] url = "etcd://10.0.0.5:2379/custos"   # or sqlite:///var/lib/custos/custos.db
            ca_file / cert_file / key_file        # optional mTLS to etcd
    [audit] signing_key_file = ..., checkpoint_interval = 10
            checkpoint_max_events = 1000, checkpoint_max_age = 300   # a checkpoint at least this often
    [keys]  provider = "vault", url = ..., token_file = ..., mount = "transit"
            auth = "token_file" | "approle" (role_id[_file], secret_id_file) | "jwt" (role, jwt_file)
            checkpoint_key = "audit-checkpoints"   # audit checkpoints signed in Transit (docs/keys.md)
            report_key = "order-reports"           # completion reports signed in Transit (docs/orders.md)
            (or provider = "local", path = ..., dev_only = true — development only)
    [blobs] url = "s3://bucket/prefix?endpoint=...", access_key = ..., secret_key_file = ...
            (or url = "file:///var/lib/custos/blobs")
    [custody] lease_ttl = 30, sweep_interval = 1, ca_cert = ..., ca_key = ...  (signs agent CSRs)
              agent_cert_ttl = 2592000   # seconds an agent certificate lasts (renewed at 2/3)
              revocation_poll = 2        # seconds: each replica re-reads the revocation list
    enroll_listen = "0.0.0.0:7444"   # enrollment only: server-authenticated TLS, one-time tokens
    [server] probe_listen = "0.0.0.0:8080"   # unauthenticated HTTP /healthz, /readyz (off when absent)
             serve = "all"   # or "keys": a key-broker replica, Keys only (docs/scale.md)
             idle_connection_s = 120   # a connection with no call for this long is closed (1..3600)
    [orders] signer_set_file = ...   # canonical bytes of signer set v1, installed once
             feed_prefix = "orders/feed/"   # orders at quorum published to the blob store ("" = off)
             report_key_file = ...   # DEVELOPMENT ONLY: a local key signs reports ([keys] report_key: Transit)
    [rules], [notify], [metrics]     # anomaly rules, webhooks, Prometheus (docs/incidents.md)
    [log]   level = "info"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custos.controlplane.metrics import parse_metrics_config
from custos.controlplane.notify import parse_notify_config
from custos.controlplane.pki import AGENT_CERT_TTL, AGENT_CERT_TTL_RANGE
from custos.controlplane.probes import parse_probe_listen
from custos.controlplane.revocations import POLL
from custos.controlplane.rules.config import parse_rules_config
from custos.errors import InvalidInput

_KNOWN = {
    "": {"listen", "enroll_listen", "data_dir", "tls", "store", "audit", "log", "keys", "blobs", "custody", "orders",
         "rules", "notify", "metrics", "server"},
    "server": {"probe_listen", "serve", "idle_connection_s"},
    "custody": {"lease_ttl", "sweep_interval", "ca_cert", "ca_key", "agent_cert_ttl", "revocation_poll"},
    "orders": {"signer_set_file", "report_key_file", "feed_prefix"},
    "keys": {"provider", "url", "token_file", "mount", "key_prefix", "path", "dev_only", "verify",
             "auth", "auth_mount", "role_id", "role_id_file", "secret_id_file", "role", "jwt_file",
             "health_interval", "checkpoint_key", "checkpoint_key_version", "checkpoint_public_key_file",
             "report_key"},
    "blobs": {"url", "access_key", "secret_key_file"},
    "tls": {"ca_file", "cert_file", "key_file"},
    "store": {"url", "ca_file", "cert_file", "key_file"},
    "audit": {"signing_key_file", "checkpoint_interval", "checkpoint_max_events", "checkpoint_max_age"},
    "log": {"level", "format"},
}


@dataclass
class ServerConfig:
    listen: str = "127.0.0.1:7070"
    data_dir: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    store_url: str = ""
    store_tls: dict[str, str] = field(default_factory=dict)
    audit_key: Path | None = None
    checkpoint_interval: float = 10.0
    checkpoint_max_events: int = 1000  # no more events than this without a checkpoint
    checkpoint_max_age: float = 300.0  # no event waits longer than this (s) for a checkpoint
    log_level: str = "info"
    log_format: str = "json"
    dev: bool = False
    enroll_listen: str = ""
    signer_set_file: Path | None = None
    feed_prefix: str = "orders/feed/"  # orders at quorum are published here in the blob store; "" = off
    report_key_file: Path | None = None  # dev only: reports signed by a local key ([keys] report_key: Transit)
    lease_ttl: float = 30.0
    sweep_interval: float = 1.0
    ca_cert: Path | None = None
    ca_key: Path | None = None
    agent_cert_ttl: float = AGENT_CERT_TTL
    revocation_poll: float = POLL
    keys: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)
    notify: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    config_dir: Path | None = None
    probe_listen: str = ""  # unauthenticated HTTP /healthz and /readyz; "" = off
    serve: str = "all"  # "keys": this replica serves the Keys service alone (SERVE_CHOICES)
    idle_connection_s: float = 120.0  # connections with no call for this long are closed (GOAWAY; docs/operations.md)


SERVE_CHOICES = ("all", "keys")


def load_config(path: Path | None) -> ServerConfig:
    """Parse a TOML config file; unknown keys are errors, not silently ignored.

    Raises InvalidInput.
    """
    cfg = ServerConfig()
    if path is None:
        return cfg
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"config {path}: {exc}") from None
    for section, keys in _KNOWN.items():
        table = raw if section == "" else raw.get(section, {})
        if not isinstance(table, dict):
            raise InvalidInput(f"config {path}: [{section}] must be a table")
        unknown = set(table) - keys
        if unknown:
            where = f"[{section}]" if section else "top level"
            raise InvalidInput(f"config {path}: unknown key(s) {sorted(unknown)} at {where}")
    base = path.parent

    def p(v: str | None) -> Path | None:
        return None if not v else (base / v if not Path(v).is_absolute() else Path(v))

    cfg.listen = str(raw.get("listen", cfg.listen))
    cfg.data_dir = p(raw.get("data_dir"))
    tls = raw.get("tls", {})
    cfg.tls_ca, cfg.tls_cert, cfg.tls_key = p(tls.get("ca_file")), p(tls.get("cert_file")), p(tls.get("key_file"))
    store = raw.get("store", {})
    cfg.store_url = str(store.get("url", ""))
    cfg.store_tls = {k: str(p(store[k])) for k in ("ca_file", "cert_file", "key_file") if k in store}
    audit = raw.get("audit", {})
    cfg.audit_key = p(audit.get("signing_key_file"))
    try:
        cfg.checkpoint_interval = float(audit.get("checkpoint_interval", cfg.checkpoint_interval))
    except (TypeError, ValueError):
        raise InvalidInput(f"config {path}: audit.checkpoint_interval must be a number") from None
    if cfg.checkpoint_interval <= 0:
        raise InvalidInput(f"config {path}: audit.checkpoint_interval must be > 0")
    n, age = audit.get("checkpoint_max_events", cfg.checkpoint_max_events), \
        audit.get("checkpoint_max_age", cfg.checkpoint_max_age)
    if (type(n) is not int or not 1 <= n <= 10**9 or type(age) not in (int, float)
            or not 3 * cfg.checkpoint_interval <= age <= 86400):
        raise InvalidInput(f"config {path}: audit.checkpoint_max_events must be an integer >= 1 and "
                           "audit.checkpoint_max_age from 3 x checkpoint_interval to 86400 (seconds)")
    cfg.checkpoint_max_events, cfg.checkpoint_max_age = n, float(age)
    cfg.enroll_listen = str(raw.get("enroll_listen", ""))
    server = raw.get("server", {})
    serve = server.get("serve", cfg.serve)
    if serve not in SERVE_CHOICES:
        raise InvalidInput(f"config {path}: [server] serve must be one of {', '.join(SERVE_CHOICES)}")
    cfg.serve = serve
    idle = server.get("idle_connection_s", cfg.idle_connection_s)
    if type(idle) not in (int, float) or not 1 <= idle <= 3600:
        raise InvalidInput(f"config {path}: [server] idle_connection_s must be a number of seconds, 1..3600")
    cfg.idle_connection_s = float(idle)
    try:
        cfg.probe_listen = parse_probe_listen(server.get("probe_listen", ""))
    except InvalidInput as exc:
        raise InvalidInput(f"config {path}: {exc}") from None
    custody = raw.get("custody", {})
    try:
        cfg.lease_ttl = float(custody.get("lease_ttl", cfg.lease_ttl))
        cfg.sweep_interval = float(custody.get("sweep_interval", cfg.sweep_interval))
    except (TypeError, ValueError):
        raise InvalidInput(f"config {path}: custody.lease_ttl and sweep_interval must be numbers") from None
    if not 1 <= cfg.lease_ttl <= 3600 or not 0 < cfg.sweep_interval <= 60:
        raise InvalidInput(f"config {path}: custody.lease_ttl must be 1..3600 s, sweep_interval 0..60 s")
    cfg.ca_cert, cfg.ca_key = p(custody.get("ca_cert")), p(custody.get("ca_key"))
    ttl, poll = custody.get("agent_cert_ttl", cfg.agent_cert_ttl), custody.get("revocation_poll", cfg.revocation_poll)
    low, high = AGENT_CERT_TTL_RANGE
    if type(ttl) not in (int, float) or not low <= ttl <= high or type(poll) not in (int, float) or not 0 < poll <= 60:
        raise InvalidInput(f"config {path}: custody.agent_cert_ttl must be {low:.0f}..{high:.0f} s, "
                           "revocation_poll 0..60 s")
    cfg.agent_cert_ttl, cfg.revocation_poll = float(ttl), float(poll)
    cfg.signer_set_file = p(raw.get("orders", {}).get("signer_set_file"))
    feed_prefix = raw.get("orders", {}).get("feed_prefix", cfg.feed_prefix)
    if not isinstance(feed_prefix, str) or (feed_prefix and not feed_prefix.endswith("/")):
        raise InvalidInput(f"config {path}: [orders] feed_prefix must be a key prefix ending in '/' (\"\" = off)")
    cfg.feed_prefix = feed_prefix
    cfg.report_key_file = p(raw.get("orders", {}).get("report_key_file"))
    cfg.keys = dict(raw.get("keys", {}))
    for k in ("token_file", "path", "role_id_file", "secret_id_file", "jwt_file", "checkpoint_public_key_file"):
        if isinstance(cfg.keys.get(k), str):
            cfg.keys[k] = str(p(cfg.keys[k]))
    if cfg.keys and cfg.keys.get("provider") not in ("vault", "local"):
        raise InvalidInput(f"config {path}: keys.provider must be \"vault\" or \"local\"")
    cfg.blobs = dict(raw.get("blobs", {}))
    if "secret_key_file" in cfg.blobs:
        cfg.blobs["secret_key_file"] = str(p(cfg.blobs["secret_key_file"]))
    cfg.config_dir = base
    for name in ("rules", "notify", "metrics"):
        setattr(cfg, name, dict(raw.get(name, {})))

    try:
        parse_rules_config(cfg.rules, base_dir=base)
        parse_notify_config(cfg.notify, base_dir=base)
        parse_metrics_config(cfg.metrics, base_dir=base)
    except InvalidInput as exc:
        raise InvalidInput(f"config {path}: {exc}") from None
    lg = raw.get("log", {})
    cfg.log_level = str(lg.get("level", cfg.log_level))
    cfg.log_format = str(lg.get("format", cfg.log_format))
    return cfg
