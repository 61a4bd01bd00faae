"""The server's configuration: upstream's JSON keys plus ours, as one typed model (pydantic), with
errors that name the key and the fix in one line."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    with_config,
)
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails, PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from .errors import ConfigError

DEFAULT_ADDR = "127.0.0.1:8462"
# The uid builds run as when mistryd runs as root and `uid` is not set: unprivileged, owned by no
# account on a usual system (65532 is the "nonroot" of distroless images).
BUILD_UID = 65532

# The kinds of values, each typed once. Numbers are strict (JSON "2" or true is not 2): a config
# file is written by hand, and a quoted number is more often a mistake than an intent.
Filesystem = Literal["auto", "btrfs", "plain"]
NetworkMode = Literal["bridge", "none", "host"]
Role = Literal["read", "build", "admin", "builder"]  # builder: only /api/builder/ (remote builders)
AtLeastOne = Annotated[StrictInt, Field(ge=1)]
NotNegative = Annotated[StrictInt, Field(ge=0)]
# gt=0 is used for limits only, where null means "no limit": the error message says so
Limit = Annotated[StrictInt, Field(gt=0)] | None
Cpus = Annotated[float, Strict(), Field(gt=0)] | None  # strict floats take integers too (4 -> 4.0)
Seconds = NotNegative  # 0 means none (for build_timeout) or off (for gc_interval)
Memory = StrictStr | None  # docker's syntax: "512m", "2g"

FILESYSTEMS: tuple[str, ...] = get_args(Filesystem)
NETWORK_MODES: tuple[str, ...] = get_args(NetworkMode)
ROLES: tuple[str, ...] = get_args(Role)


def _fail(problem: str) -> PydanticCustomError:
    """A validator's error: `problem` is shown to the user after the key, as it is."""
    return PydanticCustomError("mistryd", problem)


def _base(info: ValidationInfo) -> Path:
    """Relative paths resolve against the config file's folder (from_dict's `base`). Without one
    (dataclasses.replace validates again) the paths are already absolute."""
    return (info.context or {}).get("base") or Path.cwd()


def _required(value: Any) -> Any:
    if value is None or value == "":
        raise _fail("is required")
    return value


def _resolved(path: Path, info: ValidationInfo) -> Path:
    return (_base(info) / path).resolve()


FolderPath = Annotated[Path, BeforeValidator(_required), AfterValidator(_resolved)]


def _host_port(addr: str) -> str:
    try:
        split_addr(addr)
    except ConfigError:
        raise _fail(f"'{addr}' is not HOST:PORT (e.g. {DEFAULT_ADDR})") from None
    return addr


HostPort = Annotated[StrictStr, AfterValidator(_host_port)]


def _container_target(target: str) -> str:
    if not target.split(":")[0].startswith("/"):
        raise _fail("the container path must be absolute")
    return target


def _mount_sources(mounts: dict[str, str], info: ValidationInfo) -> dict[str, str]:
    return {str((_base(info) / src).resolve()): target for src, target in mounts.items()}


Mounts = Annotated[dict[str, Annotated[StrictStr, AfterValidator(_container_target)]],
                   AfterValidator(_mount_sources)]


def _capability(cap: str) -> str:
    if not cap.isupper():
        raise _fail(f"{json.dumps(cap)} is not a capability like \"CHOWN\"")
    return cap


_HOST_ENTRY = re.compile(r"(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def _host_entry(entry: str) -> str:
    """An `allowed_hosts` entry, kept lower-case: "builds.example.org", "proxy.lan:8080"."""
    host = entry.strip().lower().rstrip(".")
    if not _HOST_ENTRY.fullmatch(host):
        raise _fail(f"{json.dumps(entry)} is not a host name like \"builds.example.org\" "
                    "or \"builds.example.org:8462\"")
    return host


# Unknown keys are refused everywhere: a misspelt key would otherwise be silently ignored.
_NO_EXTRA = ConfigDict(extra="forbid")


def _group_globs(globs: tuple[str, ...]) -> tuple[str, ...]:
    if not globs:
        raise _fail("must name at least one group glob (like \"pr-*\"), or be left out for "
                    "every group")
    return globs


@dataclass(frozen=True, config=_NO_EXTRA)
class Token:
    """`tokens`: [{"name": "ci", "token": "...", "role": "build"}, ...]; `groups` (globs, e.g.
    ["pr-*"]) limits the groups its builds and explains may name (docs/provenance.md)."""

    name: Annotated[StrictStr, Field(min_length=1)]
    token: Annotated[StrictStr, Field(min_length=16)] = dataclasses.field(repr=False)  # never in a log
    role: Role
    groups: Annotated[tuple[StrictStr, ...], AfterValidator(_group_globs)] | None = None


def label_problem(label: str) -> str | None:
    """Why `label` cannot be a builder's label or name, or None."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", label):
        return (f"{json.dumps(label)} is not a name like \"big\" or \"gpu-1\" (letters, digits, "
                "'.', '_', '-')")
    return None


def _label(label: str) -> str:
    if problem := label_problem(label):
        raise _fail(problem)
    return label


# a newer request for the same project and group: join the identical build (coalesce, as
# upstream) or cancel the older one in flight (supersede, as chaotic-manager)
Duplicates = Literal["coalesce", "supersede"]
Labels = tuple[Annotated[StrictStr, AfterValidator(_label)], ...]
# the shared queue: redis://[:PASSWORD@]HOST:PORT/DB or rediss:// (TLS)
QUEUE_URL = re.compile(r"rediss?://(?:[^@/\s]*@)?[^@/\s:]+(?::\d{1,5})?(?:/\d{1,2})?")


def _queue_url(url: str) -> str:
    if not QUEUE_URL.fullmatch(url):
        raise _fail(f"must be \"redis://HOST:PORT/DB\" (or rediss:// for TLS), got "
                    f"{json.dumps(url)}")
    return url


SHARED_BACKLOG = 1000  # jobs that may wait in a shared queue when job_backlog is not set
QueueUrl = Annotated[StrictStr, AfterValidator(_queue_url)]


@with_config(_NO_EXTRA)
class ProjectOverrides(TypedDict, total=False):
    """`projects.NAME`: the container settings one project gets instead of the server-wide keys of
    the same names (so typed the same). A key that is absent means the server's value; null
    means null (no limit) where the server-wide key allows it."""

    build_timeout: Seconds
    memory: Memory
    cpus: Cpus
    pids_limit: Limit
    network_mode: NetworkMode
    tty: StrictBool
    # not container settings: how the queue treats the project's jobs (docs/distributed.md)
    duplicates: Duplicates
    labels: Labels


PROJECT_KEYS: tuple[str, ...] = tuple(ProjectOverrides.__annotations__)
CONTAINER_KEYS: tuple[str, ...] = ("build_timeout", "memory", "cpus", "pids_limit", "network_mode",
                                   "tty")


@dataclasses.dataclass(frozen=True)
class ProjectSettings:
    """What a project's container gets: the server-wide values, overridden per project."""

    build_timeout: Seconds
    memory: Memory
    cpus: Cpus
    pids_limit: Limit
    network_mode: NetworkMode
    # the build's output through a terminal: stdout and stderr in the exact order written (and
    # colours from tools that want a terminal), but no stderr marks (docs/web.md, "Log order")
    tty: bool = False


# --- push-triggered builds (issue 13, docs/push.md): the repositories a webhook may build -----

# URLs git may fetch: git://, ssh://, http(s):// and scp-like user@host:path; never file:// or a
# local path (the server would read its own disk) nor a transport helper (ext::)
_GIT_URL = re.compile(r"(?:(?:git|ssh|https?)://[^\s/]+(?:/\S*)?|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+)")


def git_url_problem(url: str) -> str | None:
    """Why `url` may not be fetched, or None (also for a payload's repositoryUrl)."""
    if not _GIT_URL.fullmatch(url):
        return (f"{json.dumps(url)} is not a git URL like \"git://host/repo.git\", "
                "\"ssh://git@host/org/repo.git\", \"https://host/org/repo.git\" or "
                "\"git@host:org/repo.git\"")
    if url.split("://", 1)[-1].split("@", 1)[-1].startswith("-"):  # ssh would read an option
        return f"{json.dumps(url)}: the host name must not start with '-'"
    return None


def _git_url(url: str) -> str:
    if problem := git_url_problem(url):
        raise _fail(problem)
    return url


def _repository_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+", name) or ".." in name:
        raise _fail(f"{json.dumps(name)} is not a repository name like \"example-org/example-repo\"")
    return name


def _branch_rule(rule: str) -> str:
    if not rule or rule.startswith("/") or rule.endswith("/") or any(c.isspace() for c in rule):
        raise _fail(f"{json.dumps(rule)} is not a branch rule like \"production\" or "
                    "\"master/docs\" (branch/task)")
    return rule


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise _fail(f"{path} is not a file")
    return path


GitUrl = Annotated[StrictStr, AfterValidator(_git_url)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]
FilePath = Annotated[Path, BeforeValidator(_required), AfterValidator(_resolved),
                     AfterValidator(_existing_file)]
BranchRules = Annotated[dict[Annotated[StrictStr, AfterValidator(_branch_rule)], NonEmpty],
                        Field(min_length=1)]


@dataclass(frozen=True, config=_NO_EXTRA)
class Repository:
    """`repositories.ORG/REPO`: what a push to it builds. `branches` maps a branch rule
    (a branch prefix, or `branch/task`) to the command run with `sh -c` in the checkout."""

    branches: BranchRules
    url: GitUrl | None = None  # the only URL fetched; None: the payload's (as Mixmaster did)
    project: NonEmpty | None = None  # the image the command runs in; None: the default one
    secret: NonEmpty | None = dataclasses.field(default=None, repr=False)
    notify: tuple[StrictStr, ...] = ()  # Apprise URLs, besides the global `notify`
    status_token: NonEmpty | None = dataclasses.field(default=None, repr=False)
    # the forge's API base for commit statuses (None: made from `url`'s host; mistryd/push/statuses.py)
    status_api: NonEmpty | None = None
    # the branches (fnmatch globs) whose pushes may write their branch rule's group cache; the
    # others build in a group of their own, starting from it (None: each rule's own branch)
    trusted_branches: tuple[StrictStr, ...] | None = None


Repositories = dict[Annotated[StrictStr, AfterValidator(_repository_name)], Repository]
# --- end of push-triggered builds -------------------------------------------------------------


@dataclass(frozen=True, config=_NO_EXTRA)
class Config:
    """The config file's keys, their types, defaults and checks (README: Configuration)."""

    projects_path: FolderPath
    build_path: FolderPath
    mounts: Mounts = dataclasses.field(default_factory=dict)
    # builds this machine runs at once (with a shared `queue`, 0: it only coordinates)
    job_concurrency: NotNegative = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    job_backlog: NotNegative | None = None  # None: 2 x job_concurrency, as upstream
    # builds run in this many processes of their own, job_concurrency each (0: in the serving
    # process): restarting or losing one never stops the server, and a dead one's jobs run again
    builder_processes: Annotated[StrictInt, Field(ge=0, le=64)] = 1
    # with builder processes, the HTTP API runs in this many processes (None: one per CPU), all
    # answering on `addr`; restarting them (SIGHUP) never touches a running build
    http_workers: Annotated[StrictInt, Field(ge=1, le=64)] | None = None
    addr: HostPort = DEFAULT_ADDR
    filesystem: Filesystem = "auto"
    network_mode: NetworkMode = "bridge"
    tty: StrictBool = False  # builds' output through a terminal: exact order, no stderr marks
    container_env: dict[str, StrictStr] = dataclasses.field(default_factory=dict)
    uid: StrictInt | None = None  # None: the server's own uid, as upstream; BUILD_UID instead of root
    pull_base: StrictBool = False  # `rebuild` pulls base images only when asked: there may be no registry
    http_threads: AtLeastOne = 128
    max_body_bytes: AtLeastOne = 1 << 20
    rsync_addr: HostPort | None = None  # HOST:PORT of a read-only rsync daemon (module `mistry`); None: off
    # limits of build containers, and per-project overrides of them
    build_timeout: Seconds = 3600
    memory: Memory = None
    cpus: Cpus = None
    pids_limit: Limit = 4096
    cap_add: tuple[Annotated[StrictStr, AfterValidator(_capability)], ...] = ()  # all others dropped
    projects: dict[str, ProjectOverrides] = dataclasses.field(default_factory=dict)
    shutdown_grace: Seconds = 30  # seconds running builds get to finish on SIGTERM
    # garbage collection and disk
    max_build_bytes: Limit = None
    max_build_age: Limit = None  # seconds
    gc_interval: Seconds = 300
    min_free_bytes: NotNegative = 256 << 20  # below this, new builds are refused with 507
    # access
    tokens: tuple[Token, ...] = ()
    anonymous_read: StrictBool = False
    # Host names (HOST or HOST:PORT) this server answers to besides its listen address and
    # loopback, e.g. the name a reverse proxy forwards: other names are refused (DNS rebinding)
    allowed_hosts: tuple[Annotated[StrictStr, AfterValidator(_host_entry)], ...] = ()
    # push-triggered builds (docs/push.md): repositories a webhook may build, Apprise URLs told
    # of every push build, the deploy key each push build's ssh-agent holds, a Mixmaster INI
    # file read as it is (this file's settings win), and a mode that only logs what would run
    repositories: Repositories = dataclasses.field(default_factory=dict)
    notify: tuple[StrictStr, ...] = ()
    ssh_key: FilePath | None = None
    mixmaster_config: FilePath | None = None
    dry_run: StrictBool = False
    # builders on other machines (docs/distributed.md): the shared queue (None: the embedded one
    # on this machine's index), and how long a builder may be silent before it counts as lost
    queue: QueueUrl | None = None
    builder_timeout: Annotated[StrictFloat | StrictInt, Field(gt=0)] = 30
    builder_name: Annotated[StrictStr, AfterValidator(_label)] | None = None  # None: the host name

    @property
    def api_processes(self) -> int:
        """How many processes answer HTTP (builds in the serving process: that one)."""
        if self.builder_processes == 0:
            return 1
        return self.http_workers or os.cpu_count() or 1

    @property
    def lease_seconds(self) -> float:
        """How long a builder may be silent before its job is taken again."""
        from .queue.base import LEASE_SECONDS  # the queue imports this module

        return self.builder_timeout if self.queue is not None else LEASE_SECONDS

    @property
    def backlog(self) -> int:
        if self.job_backlog is not None:
            return self.job_backlog
        # with builders elsewhere the central machine's own concurrency says nothing of the
        # capacity: a large bound, set job_backlog to choose
        return 2 * self.job_concurrency if self.queue is None else SHARED_BACKLOG

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
        server_wide = ProjectSettings(build_timeout=self.build_timeout, memory=self.memory, cpus=self.cpus,
                                      pids_limit=self.pids_limit, network_mode=self.network_mode,
                                      tty=self.tty)
        overrides: dict[str, Any] = {k: v for k, v in self.projects.get(project, {}).items()
                                     if k in CONTAINER_KEYS}
        return dataclasses.replace(server_wide, **overrides)

    def duplicates(self, project: str) -> str:
        """What a newer request for the same project and group does: "coalesce" or "supersede"."""
        return self.projects.get(project, {}).get("duplicates", "coalesce")

    def labels(self, project: str) -> tuple[str, ...]:
        """The labels a builder must have, every one, to take the project's jobs."""
        return tuple(self.projects.get(project, {}).get("labels", ()))

    @property
    def name(self) -> str:
        """This server's name as a builder (BuildInfo `Builder` of its own builds)."""
        return self.builder_name or socket.gethostname()

    @property
    def host(self) -> str:
        return split_addr(self.addr)[0]

    @property
    def port(self) -> int:
        return split_addr(self.addr)[1]


_CONFIG = TypeAdapter(Config)


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


def from_dict(raw: dict, base: Path | None = None) -> Config:
    """The config from a file's JSON object; relative paths resolve against `base` (default: the
    current folder). Raises ConfigError naming the first bad key."""
    from .push.mixmaster_ini import merged  # imported here: the push package imports this module

    raw = merged(raw, base or Path.cwd())  # `mixmaster_config`, read in (the JSON's keys win)
    try:
        cfg = _CONFIG.validate_python(raw, context={"base": base or Path.cwd()})
    except ValidationError as e:
        raise _config_error(e.errors(include_url=False)[0]) from None
    _check_folders(cfg)
    if cfg.job_concurrency == 0 and cfg.queue is None:
        raise ConfigError("job_concurrency", "must be at least 1 (0, build nothing here, needs "
                          "a shared `queue` with builders elsewhere)")
    if cfg.builder_processes == 0 and (cfg.http_workers or 1) > 1:
        raise ConfigError("http_workers", "more than one HTTP process needs builds in builder "
                          "processes: set builder_processes to 1 or more (or http_workers to 1)")
    return cfg


def _check_folders(cfg: Config) -> None:
    """What the file system must offer; checked after the types, as the types say where to look."""
    if not cfg.projects_path.is_dir():
        raise ConfigError("projects_path", f"{cfg.projects_path} is not a folder")
    try:  # unlike upstream, a missing build_path is created: a fresh checkout just works
        cfg.build_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("build_path", f"cannot create {cfg.build_path} ({e.strerror})") from None
    if not os.access(cfg.build_path, os.W_OK):
        raise ConfigError("build_path", f"{cfg.build_path} is not writable")


# pydantic's error types -> what the value must be, in the words of a JSON file
_KINDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string",
    "path_type": "a string (a path)", "bool_type": "true or false", "bool_parsing": "true or false",
    "dict_type": "an object", "dataclass_type": "an object", "dataclass_args_type": "an object",
    "model_type": "an object", "tuple_type": "a list", "list_type": "a list",
}


def _config_error(err: ErrorDetails) -> ConfigError:
    """One pydantic error as one line: the key (`tokens[0].role`) and what to write instead."""
    loc = err["loc"]
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    kind, ctx = err["type"], err.get("ctx") or {}
    got = f", got {json.dumps(err['input'], default=str)}"
    if kind in ("missing", "missing_argument"):
        problem = "is required"
    elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
        problem = _unknown_key(loc)
    elif kind in _KINDS:
        problem = f"must be {_KINDS[kind]}{got}"
    elif kind == "literal_error":
        problem = f"must be one of {ctx['expected'].replace(chr(39), '')}{got}"
    elif kind == "greater_than_equal":
        problem = ("must not be negative" if ctx["ge"] == 0 else f"must be at least {ctx['ge']}") + got
    elif kind == "greater_than":
        problem = f"must be positive (or null for no limit){got}"
    elif kind == "string_too_short":
        n = ctx["min_length"]
        problem = "must not be empty" if n == 1 else f"must be at least {n} characters"
    else:  # our validators' own words (_fail), or a pydantic message as a last resort
        problem = err["msg"]
    return ConfigError(key, " ".join(problem.split()))


def _unknown_key(loc: tuple) -> str:
    if loc[0] == "projects" and len(loc) == 3:
        what, known = "unknown override", PROJECT_KEYS
    elif loc[0] == "repositories" and len(loc) == 3:
        what, known = "unknown key", tuple(f.name for f in dataclasses.fields(Repository))
    elif loc[0] == "tokens" and len(loc) == 3:
        what, known = "unknown key", tuple(f.name for f in dataclasses.fields(Token))
    else:
        what, known = "unknown key", tuple(sorted(f.name for f in dataclasses.fields(Config)))
    if close := difflib.get_close_matches(str(loc[-1]), known, n=1):
        return f'{what} (did you mean "{close[0]}"?)'
    return f"{what} (known: {', '.join(known)})"
