"""What a client asks for (JobRequest), its key, and what it gets back (BuildInfo)."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from .errors import BadRequest
from .names import check_name, is_scalar_text

KEY_VERSION = 1
IMAGE_BUILD_FAILED = -999  # upstream's exit code for "the container never ran"


@dataclass(frozen=True)
class JobRequest:
    project: str
    params: dict[str, str] = field(default_factory=dict)
    group: str = ""
    rebuild: bool = False

    @classmethod
    def from_json(cls, body: object) -> JobRequest:
        """Validate a decoded `POST /jobs` body. Keys match case-insensitively, as upstream."""
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object like {\"project\": \"hello\"}")
        lowered: dict[str, object] = {}
        for key, value in body.items():
            if key.lower() in lowered:
                raise BadRequest(f"field {key.lower()!r} is given twice (keys match "
                                 "case-insensitively); send it once")
            lowered[key.lower()] = value
        unknown = set(lowered) - {"project", "params", "group", "rebuild"}
        if unknown:
            raise BadRequest(
                f"unknown field(s) {', '.join(sorted(unknown))}; "
                "known: project, params, group, rebuild"
            )
        project = lowered.get("project")
        if not isinstance(project, str) or not project:
            raise BadRequest("'project' is required and must be a non-empty string")
        check_name("project", project)
        group = lowered.get("group")
        group = "" if group is None else group
        if not isinstance(group, str):
            raise BadRequest("'group' must be a string")
        if group:
            check_name("group", group)
        params = lowered.get("params")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise BadRequest("'params' must be an object of strings, like {\"ref\": \"main\"}")
        for key, value in params.items():
            check_name("param key", key)
            if not isinstance(value, str):
                raise BadRequest(f"param {key!r} must be a string, got {json.dumps(value)}")
            if not is_scalar_text(value):
                raise BadRequest(f"param {key!r} must be valid Unicode text (no lone surrogates)")
        rebuild = lowered.get("rebuild", False)
        if not isinstance(rebuild, bool):
            raise BadRequest("'rebuild' must be true or false")
        return cls(project=project, params=dict(params), group=group, rebuild=rebuild)

    def key_params(self) -> dict[str, str]:
        """Params that identify the job: those whose key starts with '_' are opaque."""
        return public_params(self.params)

    def opaque_params(self) -> dict[str, str]:
        """The '_' params: secrets, for this request's container only. They are never part of
        a key, an answer, the index's history or a page."""
        return {k: v for k, v in sorted(self.params.items()) if is_opaque(k)}


def is_opaque(param: str) -> bool:
    return param.startswith("_")


def public_params(params: dict[str, str]) -> dict[str, str]:
    """`params` without the opaque ones, sorted: what may be stored, shown and answered."""
    return {k: v for k, v in sorted(params.items()) if not is_opaque(k)}


def job_key(request: JobRequest, fingerprint: str) -> str:
    """The job id: sha256 of a canonical JSON encoding, so no two inputs can collide by
    concatenation (upstream's `project + group + params` could)."""
    return _job_key(request.project, fingerprint, request.group,
                    tuple(request.key_params().items()))


@functools.lru_cache(maxsize=4096)  # the same requests come again and again (cache hits)
def _job_key(project: str, fingerprint: str, group: str, params: tuple) -> str:
    canonical = json.dumps(
        {
            "v": KEY_VERSION,
            "project": project,
            "fingerprint": fingerprint,
            "group": group,
            "params": dict(params),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def record_status(raw: dict) -> str:
    """A build record's status; records without one (upstream's) by their exit code."""
    status = raw.get("Status")
    if isinstance(status, str) and status:
        return status
    return "succeeded" if raw.get("ExitCode") == 0 else "failed"


def servable(raw: dict) -> bool:
    """The one definition of a build that may be answered from cache, joined as a group's
    cache source or downloaded: it succeeded. A cancelled, refused or failed build is never
    servable, whatever its exit code."""
    return record_status(raw) == "succeeded" and raw.get("ExitCode") == 0


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class BuildInfo:
    """One build's record: build_info.json beside out.log. Field names follow upstream on the wire."""

    ID: str
    Project: str
    Params: dict[str, str]
    Group: str
    Path: str
    URL: str
    StartedAt: str
    Duration: int = 0  # nanoseconds, as upstream
    Cached: bool = False
    Coalesced: bool = False
    Incremental: bool = False
    ExitCode: int = IMAGE_BUILD_FAILED
    ErrBuild: str = ""
    ContainerStdouterr: str = ""
    ContainerStderr: str = ""
    TransportMethod: str = "rsync"
    State: str = "ready"
    Status: str = "succeeded"
    Timings: dict[str, float] = field(default_factory=dict)
    # ours: the build whose /data/cache this one started from, {"Project", "Group", "ID"}, or
    # None (an empty cache); see docs/provenance.md
    CacheFrom: dict[str, str] | None = None
    # ours: whether building it again gave the same artifacts, and when that was checked (RFC
    # 3339); None: never verified (mistryd/verify.py, docs/provenance.md)
    Reproducible: bool | None = None
    VerifiedAt: str | None = None
    # ours: the builder that ran it (a `mistryd worker`'s name, or the central server's own name
    # for its own builds; "" in records older than builders on other machines)
    Builder: str = ""

    @property
    def succeeded(self) -> bool:
        return servable(self.to_json())

    def to_json(self) -> dict:
        # by hand: dataclasses.asdict deep-copies recursively and shows up in every cache hit
        out = {name: getattr(self, name) for name in _FIELD_NAMES}
        out["Params"] = dict(self.Params)
        out["Timings"] = dict(self.Timings)
        if self.CacheFrom is not None:  # a copy; a damaged record's odd value is dropped
            out["CacheFrom"] = dict(self.CacheFrom) if isinstance(self.CacheFrom, dict) else None
        return out

    @classmethod
    def from_json(cls, raw: dict) -> BuildInfo:
        """From a record on disk or in the index. Opaque params of records written before they
        were kept out are dropped here, so no reader can pass them on."""
        info = cls(**{k: v for k, v in raw.items() if k in _FIELD_NAMES})
        if isinstance(info.Params, dict):
            info.Params = public_params(info.Params)
        return info


_FIELD_NAMES = tuple(f.name for f in fields(BuildInfo))
