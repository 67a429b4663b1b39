"""Host agent configuration: one TOML file (deploy/agent.example.toml), checked at start-up.

Every key is known and typed; an unknown key, a wrong type or a missing
required value is an InvalidInput naming the file and the key, so a bad
config gives one clear line and the agent does not start.

Relative paths are taken relative to the config file's directory.

The control plane is ``control_plane.addr`` (one HOST:PORT, or several separated
by commas) or ``control_plane.addrs`` (a list): its replicas, in order of
preference; the custody stream moves to the next one when a connection fails.
"""

from __future__ import annotations

import glob
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from custos.agent.canary import CanarySettings, parse_canary_settings
from custos.agent.guard import AllowEntry, GuardSettings
from custos.agent.scanner import DEFAULT_EXCLUDE, DEFAULT_MIN_SIZE, WEIGHT_SUFFIXES, ScanConfig
from custos.client.connection import parse_addrs, parse_dev_env
from custos.client.orderfeed import FEED_PREFIX, check_feed_prefix
from custos.core.hosts import validate_host_name
from custos.errors import InvalidInput

DEFAULT_STATE_DIR = Path("/var/lib/custos-agent")
DEFAULT_SOCKET = Path("/run/custos-agent/agent.sock")

# section -> key -> accepted types (bool is not an int here)
_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "": {"name": (str,), "state_dir": (str,), "socket": (str,)},
    "control_plane": {"addr": (str,), "addrs": (list,), "enroll_addr": (str,), "ca_file": (str,), "cert_file": (str,),
                      "key_file": (str,), "server_name": (str,)},
    "scan": {"roots": (list,), "exclude": (list,), "patterns": (list,), "min_size": (int,),
             "interval": (int, float), "process_interval": (int, float), "watch": (bool,),
             "follow_symlinks": (bool,), "workers": (int,), "sniff": (bool,)},
    "lease": {"heartbeat_interval": (int, float), "reconnect_max": (int, float)},
    "workloads": {"plaintext_dir": (str,), "stop_grace": (int, float), "allowed_uids": (list,),
                  "allowed_gids": (list,), "grant_check_interval": (int, float)},
    "blobs": {"access_key": (str,), "secret_key_file": (str,)},
    "guard": {"mode": (str,), "protected_paths": (list,), "allow": (list,), "response_timeout_ms": (int,),
              "protected_fail": (str,), "watch_registered": (bool,), "read_dedupe_s": (int, float)},
    "log": {"level": (str,), "format": (str,)},
    "metrics": {"listen": (str,)},
    "canary": {"paths": (list,), "model": (str,), "max_bytes": (int,)},
    "orders": {"feed_url": (str,), "feed_prefix": (str,), "feed_interval": (int, float), "drop_dir": (str,)},
}


def default_host_name() -> str:
    """This machine's name, lowered to the host-name alphabet the control plane accepts."""
    raw = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9.-]", "-", raw).strip("-.") or "localhost"
    return name[:253]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Everything the daemon needs; built by :func:`load_agent_config` or :func:`dev_config`."""

    name: str
    state_dir: Path
    socket_path: Path
    addr: str  # HOST:PORT, or several (the control plane's replicas) separated by commas
    enroll_addr: str = ""
    ca_file: Path
    cert_file: Path | None = None  # None: the enrolled identity in state_dir
    key_file: Path | None = None
    server_name: str = ""
    scan_roots: tuple[Path, ...]
    scan_exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    scan_patterns: tuple[str, ...] = WEIGHT_SUFFIXES
    scan_min_size: int = DEFAULT_MIN_SIZE  # any file this large is hashed, whatever its name
    scan_sniff: bool = True  # smaller files are hashed if their first bytes begin a weight format
    scan_interval: float = 3600.0
    process_interval: float = 5.0
    watch: bool = True
    follow_symlinks: bool = False
    scan_workers: int = 2
    heartbeat_interval: float = 0.0  # 0: a third of the lease TTL the server grants
    reconnect_max: float = 30.0
    plaintext_dir: Path | None = None  # None: /dev/shm when it has room, else state_dir/runs
    stop_grace: float = 10.0
    grant_check_interval: float = 10.0  # how often a run re-checks its access grant (and at its expiry)
    allowed_uids: tuple[int, ...] = ()
    allowed_gids: tuple[int, ...] = ()
    blobs_access_key: str = ""
    blobs_secret_key_file: Path | None = None
    log_level: str = "info"
    log_format: str = "json"
    guard: GuardSettings = field(default_factory=GuardSettings)  # [guard]: kernel-checked opens
    metrics_listen: str = ""  # "HOST:PORT" serves Prometheus /metrics; empty: off
    canary: CanarySettings = field(default_factory=CanarySettings)  # [canary]: decoys planted at start
    orders_feed_url: str = ""  # blob store URL of the signed-order feed (custos.agent.feed); empty: no feed
    orders_feed_prefix: str = FEED_PREFIX
    orders_feed_interval: float = 10.0
    orders_drop_dir: Path | None = None  # None: STATE_DIR/orders-drop
    dev: bool = False
    # Dev mode only: the security-team credentials used to add this host.
    dev_admin_cert: Path | None = None
    dev_admin_key: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def scan_config(self, extra_exclude: tuple[str, ...] = ()) -> ScanConfig:
        """The scanner's view; the agent's own state and plaintext directories are never scanned
        (their contents are reported from what the agent knows). Raises InvalidInput."""
        own = [str(self.state_dir), *extra_exclude]
        if self.plaintext_dir is not None:
            own.append(str(self.plaintext_dir))
        own = [glob.escape(os.path.abspath(p)) for p in own]  # literal paths, not patterns
        return ScanConfig(roots=self.scan_roots, exclude=(*self.scan_exclude, *own),
                          patterns=self.scan_patterns, min_size=self.scan_min_size, sniff=self.scan_sniff,
                          workers=self.scan_workers, follow_symlinks=self.follow_symlinks)

    def with_overrides(self, **kw: Any) -> AgentConfig:
        return replace(self, **kw)

    @property
    def addrs(self) -> tuple[str, ...]:
        """Every control-plane address, in order of preference. Raises InvalidInput."""
        return parse_addrs(self.addr, "control_plane.addr")


def _check_types(path: Path, raw: dict[str, Any]) -> None:
    for section, keys in _SCHEMA.items():
        table = raw if section == "" else raw.get(section, {})
        where = f"[{section}]" if section else "top level"
        if not isinstance(table, dict):
            raise InvalidInput(f"config {path}: [{section}] must be a table")
        known = set(keys) | ({s for s in _SCHEMA if s} if section == "" else set())
        unknown = sorted(set(table) - known)
        if unknown:
            raise InvalidInput(f"config {path}: unknown key(s) {unknown} at {where}")
        for key, types in keys.items():
            if key not in table:
                continue
            value = table[key]
            if isinstance(value, bool) and bool not in types:
                ok = False
            else:
                ok = isinstance(value, types)
            if not ok:
                want = " or ".join(t.__name__ for t in types)
                raise InvalidInput(f"config {path}: {section + '.' if section else ''}{key} must be a {want}, "
                                   f"got {type(value).__name__}")


def _str_list(path: Path, section: str, key: str, value: list[Any]) -> tuple[str, ...]:
    if not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"config {path}: {section}.{key} must be a list of non-empty strings")
    return tuple(value)


def _int_list(path: Path, section: str, key: str, value: list[Any]) -> tuple[int, ...]:
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise InvalidInput(f"config {path}: {section}.{key} must be a list of integers >= 0")
    return tuple(value)


def _positive(path: Path, key: str, value: float, *, low: float, high: float) -> float:
    if not low <= float(value) <= high:
        raise InvalidInput(f"config {path}: {key} must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _guard_section(path: Path, g: dict[str, Any], p: Any) -> GuardSettings:
    """The ``[guard]`` section (kernel-checked opens, custos.agent.guard). Raises InvalidInput."""
    allow = []
    for i, entry in enumerate(g.get("allow", [])):
        if not isinstance(entry, dict) or set(entry) != {"path", "sha256"} or \
                not all(isinstance(v, str) for v in entry.values()):
            raise InvalidInput(f"config {path}: guard.allow[{i}] must be a table with exactly path and sha256")
        try:
            allow.append(AllowEntry(path=entry["path"], sha256=entry["sha256"]))
        except InvalidInput as exc:
            raise InvalidInput(f"config {path}: guard.allow[{i}]: {exc}") from None
    protected = _str_list(path, "guard", "protected_paths", g.get("protected_paths", []))
    try:
        return GuardSettings(
            mode=g.get("mode", "auto"),
            protected_paths=tuple(os.path.normpath(os.path.abspath(p(x))) for x in protected),
            allow=tuple(allow), response_timeout_ms=g.get("response_timeout_ms", 250),
            protected_fail=g.get("protected_fail", "closed"), watch_registered=g.get("watch_registered", True),
            read_dedupe_s=float(g.get("read_dedupe_s", 60)))
    except InvalidInput as exc:
        raise InvalidInput(f"config {path}: {exc}") from None


def _control_plane_addrs(path: Path, cp: dict[str, Any]) -> str:
    """``addr`` or ``addrs``, checked, as one comma-separated string ("" if neither). Raises InvalidInput."""
    if "addr" in cp and "addrs" in cp:
        raise InvalidInput(f"config {path}: set control_plane.addr or control_plane.addrs, not both")
    key = "addrs" if "addrs" in cp else "addr"
    raw = cp.get(key, "")
    if key == "addrs" and (not raw or not all(isinstance(a, str) for a in raw)):
        raise InvalidInput(f"config {path}: control_plane.addrs must be a non-empty list of HOST:PORT strings")
    if not raw:
        return ""
    addrs = parse_addrs(raw, f"config {path}: control_plane.{key}")
    for a in addrs:
        if not re.fullmatch(r"[^\s/,]+:\d{1,5}", a):
            raise InvalidInput(f"config {path}: control_plane.{key} must be HOST:PORT, got {a!r}")
    return ",".join(addrs)


def _orders_section(path: Path, od: dict[str, Any], p: Any) -> dict[str, Any]:
    """The ``[orders]`` keys as AgentConfig fields: the signed-order feed and the drop
    directory (custos.agent.feed). Raises InvalidInput."""
    url = od.get("feed_url", "")
    if url and not re.fullmatch(r"(file|s3)://\S+", url):
        raise InvalidInput(f"config {path}: orders.feed_url must be a file:// or s3:// blob store URL")
    prefix = od.get("feed_prefix", FEED_PREFIX)
    try:
        check_feed_prefix(prefix)
    except InvalidInput as exc:
        raise InvalidInput(f"config {path}: orders.feed_prefix: {exc}") from None
    return {"orders_feed_url": url, "orders_feed_prefix": prefix,
            "orders_feed_interval": _positive(path, "orders.feed_interval", od.get("feed_interval", 10),
                                              low=0.2, high=3600),
            "orders_drop_dir": p(od["drop_dir"]) if od.get("drop_dir") else None}


def load_agent_config(path: Path, *, dev: bool = False) -> AgentConfig:
    """Parse and check an agent config file. Raises InvalidInput (one line, naming the key)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"config {path}: not UTF-8 text") from None
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"config {path}: {exc}") from None
    return config_from_dict(raw, path=path, dev=dev)


def config_from_dict(raw: dict[str, Any], *, path: Path, dev: bool = False) -> AgentConfig:
    """Build a config from parsed TOML. ``dev`` relaxes what dev mode fills in itself.

    Raises InvalidInput.
    """
    _check_types(path, raw)
    base = path.parent

    def p(v: str) -> Path:
        return Path(v) if Path(v).is_absolute() else (base / v)

    cp = raw.get("control_plane", {})
    scan = raw.get("scan", {})
    lease = raw.get("lease", {})
    wl = raw.get("workloads", {})
    blobs = raw.get("blobs", {})
    lg = raw.get("log", {})

    name = raw.get("name") or default_host_name()
    try:
        validate_host_name(name)
    except InvalidInput as exc:
        raise InvalidInput(f"config {path}: name: {exc}") from None
    addr = _control_plane_addrs(path, cp)
    if not dev:
        if not addr:
            raise InvalidInput(f"config {path}: control_plane.addr is required (or control_plane.addrs)")
        if not cp.get("ca_file"):
            raise InvalidInput(f"config {path}: control_plane.ca_file is required")
    enroll_addr = cp.get("enroll_addr", "")
    if enroll_addr and not re.fullmatch(r"[^\s/]+:\d{1,5}", enroll_addr):
        raise InvalidInput(f"config {path}: control_plane.enroll_addr must be HOST:PORT, got {enroll_addr!r}")
    if bool(cp.get("cert_file")) != bool(cp.get("key_file")):
        raise InvalidInput(f"config {path}: set both control_plane.cert_file and key_file, or neither")
    roots = _str_list(path, "scan", "roots", scan.get("roots", []))
    if not roots and not dev:
        raise InvalidInput(f"config {path}: scan.roots must list at least one directory")
    patterns = _str_list(path, "scan", "patterns", scan["patterns"]) if "patterns" in scan else WEIGHT_SUFFIXES
    exclude = _str_list(path, "scan", "exclude", scan["exclude"]) if "exclude" in scan else DEFAULT_EXCLUDE
    min_size = scan.get("min_size", DEFAULT_MIN_SIZE)
    if min_size < 0:
        raise InvalidInput(f"config {path}: scan.min_size must be >= 0")
    workers = scan.get("workers", 2)
    if not 1 <= workers <= 64:
        raise InvalidInput(f"config {path}: scan.workers must be between 1 and 64")
    level = str(lg.get("level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise InvalidInput(f"config {path}: log.level must be debug, info, warning or error")
    fmt = str(lg.get("format", "json"))
    if fmt not in ("json", "text"):
        raise InvalidInput(f"config {path}: log.format must be json or text")
    state_dir = p(raw["state_dir"]) if raw.get("state_dir") else DEFAULT_STATE_DIR
    cfg = AgentConfig(
        name=name,
        state_dir=state_dir,
        socket_path=p(raw["socket"]) if raw.get("socket") else DEFAULT_SOCKET,
        addr=addr,
        enroll_addr=enroll_addr,
        ca_file=p(cp["ca_file"]) if cp.get("ca_file") else Path(),
        cert_file=p(cp["cert_file"]) if cp.get("cert_file") else None,
        key_file=p(cp["key_file"]) if cp.get("key_file") else None,
        server_name=cp.get("server_name", ""),
        scan_roots=tuple(p(r) for r in roots),
        scan_exclude=exclude,
        scan_patterns=patterns,
        scan_min_size=min_size,
        scan_sniff=scan.get("sniff", True),
        scan_interval=_positive(path, "scan.interval", scan.get("interval", 3600), low=0.2, high=7 * 86400),
        process_interval=_positive(path, "scan.process_interval", scan.get("process_interval", 5),
                                   low=0.1, high=3600),
        watch=scan.get("watch", True),
        follow_symlinks=scan.get("follow_symlinks", False),
        scan_workers=workers,
        heartbeat_interval=(0.0 if lease.get("heartbeat_interval", 0) == 0 else
                            _positive(path, "lease.heartbeat_interval", lease["heartbeat_interval"],
                                      low=0.05, high=600)),
        reconnect_max=_positive(path, "lease.reconnect_max", lease.get("reconnect_max", 30), low=0.1, high=600),
        plaintext_dir=p(wl["plaintext_dir"]) if wl.get("plaintext_dir") else None,
        stop_grace=_positive(path, "workloads.stop_grace", wl.get("stop_grace", 10), low=0, high=600),
        grant_check_interval=_positive(path, "workloads.grant_check_interval", wl.get("grant_check_interval", 10),
                                       low=0.1, high=3600),
        allowed_uids=_int_list(path, "workloads", "allowed_uids", wl.get("allowed_uids", [])),
        allowed_gids=_int_list(path, "workloads", "allowed_gids", wl.get("allowed_gids", [])),
        blobs_access_key=blobs.get("access_key", ""),
        blobs_secret_key_file=p(blobs["secret_key_file"]) if blobs.get("secret_key_file") else None,
        log_level=level,
        log_format=fmt,
        guard=_guard_section(path, raw.get("guard", {}), p),
        metrics_listen=str(raw.get("metrics", {}).get("listen", "")),
        canary=parse_canary_settings(path, raw.get("canary", {})),
        **_orders_section(path, raw.get("orders", {}), p),
        dev=dev,
        extra={"set": sorted(k for k in ("name", "state_dir", "socket") if raw.get(k))},
    )
    if roots:
        cfg.scan_config()  # the scanner's own checks (patterns), now rather than at the first scan
    return cfg


def dev_config(data_dir: Path, *, scan: list[str], name: str | None, base: AgentConfig | None = None,
               state_dir: Path | None = None, socket_path: Path | None = None) -> AgentConfig:
    """A config for `custos agent run --dev`: connection from DATA_DIR/dev.env, socket DATA_DIR/agent.sock.

    ``base`` (from an optional --config) supplies intervals and the rest. Raises InvalidInput.
    """
    env = parse_dev_env(data_dir / "dev.env")
    for key in ("CUSTOS_ADDR", "CUSTOS_CA", "CUSTOS_CERT_DIR"):
        if not env.get(key):
            raise InvalidInput(f"{data_dir / 'dev.env'} has no {key}: is it a dev server's data dir?")
    if not env.get("CUSTOS_ENROLL_ADDR"):
        raise InvalidInput(f"{data_dir / 'dev.env'} has no CUSTOS_ENROLL_ADDR: the dev server has no "
                           "enrollment listener")
    given = set(base.extra.get("set", ())) if base is not None else set()
    host = validate_host_name(name) if name else (base.name if base is not None else default_host_name())
    roots = tuple(Path(os.path.abspath(s)) for s in scan) or (base.scan_roots if base is not None else ())
    if not roots:
        raise InvalidInput("--dev needs at least one --scan DIR")
    certs = Path(env["CUSTOS_CERT_DIR"])
    template = base or AgentConfig(name=host, state_dir=Path(), socket_path=Path(), addr="", ca_file=Path(),
                                   scan_roots=roots)
    return replace(
        template,
        name=host,
        state_dir=state_dir or (base.state_dir if base is not None and "state_dir" in given
                                else data_dir / "agents" / host),
        socket_path=socket_path or (base.socket_path if base is not None and "socket" in given
                                    else Path(env.get("CUSTOS_AGENT_SOCKET") or data_dir / "agent.sock")),
        addr=env["CUSTOS_ADDR"],
        enroll_addr=env["CUSTOS_ENROLL_ADDR"],
        ca_file=Path(env["CUSTOS_CA"]),
        cert_file=None,
        key_file=None,
        scan_roots=roots,
        dev=True,
        dev_admin_cert=certs / "security-team.pem",
        dev_admin_key=certs / "security-team.key",
    )
