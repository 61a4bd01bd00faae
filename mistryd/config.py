"""The server's configuration: upstream's JSON keys plus ours, validated with errors that name the key."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

FILESYSTEMS = ("auto", "btrfs", "plain")
NETWORK_MODES = ("bridge", "none", "host")
DEFAULT_ADDR = "127.0.0.1:8462"


ROLES = ("read", "build", "admin")
# The uid builds run as when mistryd runs as root and `uid` is not set: unprivileged, owned by no
# account on a usual system (65532 is the "nonroot" of distroless images).
BUILD_UID = 65532
PROJECT_KEYS = {"build_timeout": int, "memory": str, "cpus": (int, float), "pids_limit": int,
                "network_mode": str}


@dataclass(frozen=True)
class ProjectSettings:
    """What a project's container gets: the server defaults, overridden per project."""

    build_timeout: int  # seconds; 0 means none
    memory: str | None  # docker's syntax: "512m", "2g"
    cpus: float | None
    pids_limit: int | None
    network_mode: str


@dataclass(frozen=True)
class Token:
    name: str
    token: str = field(repr=False)  # a repr (a log line, a debugger) never shows it
    role: str


@dataclass(frozen=True)
class Config:
    projects_path: Path
    build_path: Path
    mounts: dict[str, str] = field(default_factory=dict)
    job_concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    job_backlog: int | None = None  # None: 2 x job_concurrency, as upstream
    addr: str = DEFAULT_ADDR
    filesystem: str = "auto"
    network_mode: str = "bridge"
    container_env: dict[str, str] = field(default_factory=dict)
    uid: int | None = None  # None: the server's own uid, as upstream; BUILD_UID instead of root
    pull_base: bool = False  # `rebuild` pulls base images only when asked: there may be no registry
    http_threads: int = 128
    max_body_bytes: int = 1 << 20
    rsync_addr: str | None = None  # HOST:PORT of a read-only rsync daemon (module `mistry`); None: off
    # limits of build containers, and per-project overrides of them
    build_timeout: int = 3600
    memory: str | None = None
    cpus: float | None = None
    pids_limit: int | None = 4096
    cap_add: tuple[str, ...] = ()  # every capability is dropped but these
    projects: dict[str, dict] = field(default_factory=dict)
    shutdown_grace: int = 30  # seconds running builds get to finish on SIGTERM
    # garbage collection and disk
    max_build_bytes: int | None = None
    max_build_age: int | None = None  # seconds
    gc_interval: int = 300
    min_free_bytes: int = 256 << 20  # below this, new builds are refused with 507
    # access
    tokens: tuple[Token, ...] = ()
    anonymous_read: bool = False
    # Host names (HOST or HOST:PORT) this server answers to besides its listen address and
    # loopback, e.g. the name a reverse proxy forwards: other names are refused (DNS rebinding)
    allowed_hosts: tuple[str, ...] = ()

    @property
    def backlog(self) -> int:
        return self.job_backlog if self.job_backlog is not None else 2 * self.job_concurrency

    @property
    def container_uid(self) -> int:
        """Who builds run as: config `uid`, else the server's own uid as upstream, except that a
        server running as root never runs builds as root (BUILD_UID instead)."""
        if self.uid is not None:
            return self.uid
        return BUILD_UID if os.getuid() == 0 else os.getuid()

    @property
    def container_gid(self) -> int:
        """The builds' group: their own (never root's group) when mistryd runs as root."""
        return self.container_uid if os.getuid() == 0 else os.getgid()

    def for_project(self, project: str) -> ProjectSettings:
        o = self.projects.get(project, {})
        return ProjectSettings(
            build_timeout=o.get("build_timeout", self.build_timeout),
            memory=o.get("memory", self.memory),
            cpus=o.get("cpus", self.cpus),
            pids_limit=o.get("pids_limit", self.pids_limit),
            network_mode=o.get("network_mode", self.network_mode),
        )

    @property
    def host(self) -> str:
        return split_addr(self.addr)[0]

    @property
    def port(self) -> int:
        return split_addr(self.addr)[1]


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError("addr", f"'{addr}' is not HOST:PORT (e.g. {DEFAULT_ADDR})")
    return host.strip("[]") or "0.0.0.0", int(port)


def load(path: str | os.PathLike, **overrides) -> Config:
    """Read a config file. Relative paths resolve against the file's folder."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("--config", f"no such file {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError("--config", f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError("--config", f"{path} must hold a JSON object")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(raw, base=path.resolve().parent)


_FIELDS = {
    "projects_path": str, "build_path": str, "mounts": dict, "job_concurrency": int,
    "job_backlog": int, "addr": str, "filesystem": str, "network_mode": str,
    "container_env": dict, "uid": int, "pull_base": bool, "http_threads": int,
    "max_body_bytes": int, "rsync_addr": str, "build_timeout": int, "memory": str,
    "cpus": (int, float), "pids_limit": int, "cap_add": list, "projects": dict,
    "shutdown_grace": int, "max_build_bytes": int, "max_build_age": int, "gc_interval": int,
    "min_free_bytes": int, "tokens": list, "anonymous_read": bool, "allowed_hosts": list,
}
_NULLABLE = {"rsync_addr", "memory", "cpus", "pids_limit", "max_build_bytes", "max_build_age",
             "job_backlog", "uid"}


def _type_name(want) -> str:
    if isinstance(want, tuple):
        return "a number"
    return {"str": "a string", "int": "an integer", "bool": "true or false", "dict": "an object",
            "list": "a list"}.get(want.__name__, want.__name__)


def _check_type(key: str, value, want) -> None:
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(key, f"must be {_type_name(want)}, got {json.dumps(value)}")


def from_dict(raw: dict, base: Path | None = None) -> Config:
    base = base or Path.cwd()
    for key, value in raw.items():
        if key not in _FIELDS:
            raise ConfigError(key, f"unknown key (known: {', '.join(sorted(_FIELDS))})")
        want = _FIELDS[key]
        if value is None and key in _NULLABLE:
            continue
        _check_type(key, value, want)
    for key in ("projects_path", "build_path"):
        if not raw.get(key):
            raise ConfigError(key, "is required")
    projects_path = (base / raw["projects_path"]).resolve()
    build_path = (base / raw["build_path"]).resolve()
    if not projects_path.is_dir():
        raise ConfigError("projects_path", f"{projects_path} is not a folder")
    try:  # unlike upstream, a missing build_path is created: a fresh checkout just works
        build_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("build_path", f"cannot create {build_path} ({e.strerror})") from None
    if not os.access(build_path, os.W_OK):
        raise ConfigError("build_path", f"{build_path} is not writable")
    for key in ("mounts", "container_env"):
        for k, v in raw.get(key, {}).items():
            if not isinstance(v, str):
                raise ConfigError(f"{key}.{k}", "values must be strings")
    mounts = {}
    for src, target in raw.get("mounts", {}).items():
        if not target.split(":")[0].startswith("/"):
            raise ConfigError(f"mounts.{src}", "the container path must be absolute")
        mounts[str((base / src).resolve())] = target
    for key in ("job_concurrency", "http_threads", "max_body_bytes"):
        if key in raw and raw[key] < 1:
            raise ConfigError(key, "must be at least 1")
    if raw.get("job_backlog", 0) < 0:
        raise ConfigError("job_backlog", "must not be negative")
    if raw.get("filesystem", "auto") not in FILESYSTEMS:
        raise ConfigError("filesystem", f"must be one of {', '.join(FILESYSTEMS)}")
    if raw.get("network_mode", "bridge") not in NETWORK_MODES:
        raise ConfigError("network_mode", f"must be one of {', '.join(NETWORK_MODES)}")
    for key in ("build_timeout", "shutdown_grace", "gc_interval", "min_free_bytes"):
        if raw.get(key, 0) < 0:
            raise ConfigError(key, "must not be negative")
    for key in ("pids_limit", "max_build_bytes", "max_build_age", "cpus"):
        if raw.get(key) is not None and raw[key] <= 0:
            raise ConfigError(key, "must be positive (or null for no limit)")
    for name, overrides in raw.get("projects", {}).items():
        _check_project_overrides(name, overrides)
    for cap in raw.get("cap_add", []):
        if not isinstance(cap, str) or not cap.isupper():
            raise ConfigError("cap_add", f"{json.dumps(cap)} is not a capability like \"CHOWN\"")
    values = {k: v for k, v in raw.items()
              if k not in ("projects_path", "build_path", "mounts", "tokens", "cap_add",
                           "allowed_hosts")}
    cfg = Config(projects_path=projects_path, build_path=build_path, mounts=mounts,
                 tokens=_tokens(raw.get("tokens", [])), cap_add=tuple(raw.get("cap_add", [])),
                 allowed_hosts=_allowed_hosts(raw.get("allowed_hosts", [])), **values)
    split_addr(cfg.addr)
    if cfg.rsync_addr is not None:
        try:
            split_addr(cfg.rsync_addr)
        except ConfigError as e:
            raise ConfigError("rsync_addr", e.message.split(": ", 2)[-1]) from None
    return cfg


def _check_project_overrides(name: str, overrides) -> None:
    where = f"projects.{name}"
    if not isinstance(overrides, dict):
        raise ConfigError(where, "must be an object of overrides")
    for key, value in overrides.items():
        if key not in PROJECT_KEYS:
            raise ConfigError(f"{where}.{key}",
                              f"unknown override (known: {', '.join(PROJECT_KEYS)})")
        if value is not None:
            _check_type(f"{where}.{key}", value, PROJECT_KEYS[key])
    if overrides.get("network_mode", "bridge") not in NETWORK_MODES:
        raise ConfigError(f"{where}.network_mode", f"must be one of {', '.join(NETWORK_MODES)}")


_HOST_ENTRY = re.compile(r"(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def _allowed_hosts(raw: list) -> tuple[str, ...]:
    """`allowed_hosts`: ["builds.example.org", "proxy.lan:8080"], kept lower-case."""
    hosts = []
    for i, entry in enumerate(raw):
        host = entry.strip().lower().rstrip(".") if isinstance(entry, str) else ""
        if not _HOST_ENTRY.fullmatch(host):
            raise ConfigError(f"allowed_hosts[{i}]",
                              f"{json.dumps(entry)} is not a host name like \"builds.example.org\" "
                              "or \"builds.example.org:8462\"")
        hosts.append(host)
    return tuple(hosts)


def _tokens(raw: list) -> tuple[Token, ...]:
    """`tokens`: [{"name": "ci", "token": "...", "role": "build"}, ...]"""
    tokens = []
    for i, entry in enumerate(raw):
        where = f"tokens[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "token", "role"}:
            raise ConfigError(where, 'must be an object {"name", "token", "role"}')
        for key in ("name", "token", "role"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ConfigError(f"{where}.{key}", "is required and must be a string")
        if entry["role"] not in ROLES:
            raise ConfigError(f"{where}.role", f"must be one of {', '.join(ROLES)}")
        if len(entry["token"]) < 16:
            raise ConfigError(f"{where}.token", "must be at least 16 characters")
        tokens.append(Token(entry["name"], entry["token"], entry["role"]))
    return tuple(tokens)
