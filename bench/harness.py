"""What every measurement shares: a temp area, the real server as a subprocess, a keep-alive HTTP
client, generated projects, a loopback Btrfs. Everything made here is undone by `Env.close()`,
also when a measurement fails."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECTS = Path(__file__).resolve().parent / "projects"
BIN = Path(sys.executable).parent  # the venv's entry points: mistryd, mistry
TMP_PARENT = "/var/tmp"  # a real disk (not tmpfs), as a build_path would be
BLOCK = 1 << 20


@dataclass
class Scale:
    """How much work each measurement does; `quick` is for the smoke test only."""

    quick: bool = False

    def reps(self, full: int, quick: int = 3) -> int:
        return quick if self.quick else full

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def compile_bytecode() -> None:
    """Byte-compiles the client and the server, as pip does when it installs a wheel: with
    PYTHONDONTWRITEBYTECODE set (as on these machines) an editable install otherwise compiles every
    module changed since its last .pyc at every start of `mistry` (every module stale: 20-30 ms
    more on each cached build here)."""
    packages = [str(Path(__file__).resolve().parent.parent / name)
                for name in ("mistry_client", "mistryd")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True,
                   stdout=subprocess.DEVNULL)


class Env:
    """One benchmark run's scratch space and clean-up stack."""

    def __init__(self, scale: Scale, profile_dir: Path | None = None):
        self.scale = scale
        self.profile_dir = profile_dir
        self.root = Path(tempfile.mkdtemp(prefix="mistryd-bench-", dir=TMP_PARENT))
        self.stack = contextlib.ExitStack()
        self.stack.callback(shutil.rmtree, self.root, ignore_errors=True)
        compile_bytecode()

    def close(self) -> None:
        self.stack.close()

    def dir(self, name: str) -> Path:
        path = self.root / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def server(self, projects: dict[str, int], name: str, build_path: Path | None = None,
               host: str = "127.0.0.1", **config) -> BenchServer:
        """Start mistryd with these projects (name -> bytes of big file, copied from
        bench/projects/<template>) listening on `host`; it is stopped when the run ends, or
        earlier by the caller."""
        home = self.dir(name)
        projects_path = home / "projects"
        for project, big in projects.items():
            make_project(projects_path, project, big)
        srv = BenchServer(home, projects_path, build_path or home / "builds", config,
                          self.profile_dir and self.profile_dir / f"{name}.txt", host=host)
        self.stack.callback(remove_images, srv.build_path)  # runs after the server stopped
        self.stack.callback(srv.stop)
        srv.start()
        return srv

    def btrfs(self, size: str = "4G") -> Path:
        """A loopback Btrfs mounted under the temp area, unmounted at the end."""
        base = self.dir("btrfs")
        image, mount = base / "fs.img", base / "mnt"
        mount.mkdir()
        subprocess.run(["truncate", "-s", size, str(image)], check=True)
        subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
        self.stack.callback(subprocess.run, ["umount", "-l", str(mount)], check=False)
        return mount


def template_of(project: str) -> str:
    """`hit-50mb` is made from bench/projects/hit: the part before the first dash."""
    return project.split("-", 1)[0]


def make_project(projects_path: Path, name: str, big_bytes: int = 0) -> Path:
    dest = projects_path / name
    shutil.copytree(PROJECTS / template_of(name), dest)
    if big_bytes:
        fill_file(dest / "big.bin", big_bytes)
    return dest


def fill_file(path: Path, size: int, seed: bytes | None = None) -> None:
    """`size` bytes of incompressible data, written fast: random blocks, each one varied."""
    block = bytearray(seed or os.urandom(BLOCK))
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            block[:8] = i.to_bytes(8, "little")
            chunk = block[: min(BLOCK, size - written)]
            f.write(chunk)
            written += len(chunk)
            i += 1


def fill_tree(root: Path, files: int, total_bytes: int) -> None:
    """`files` files holding `total_bytes` together, 1,000 to a folder (as caches look)."""
    each = total_bytes // files
    seed = os.urandom(max(each, 8))
    for i in range(files):
        folder = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        data = i.to_bytes(8, "little") + seed[8:each]
        (folder / f"f{i:05d}").write_bytes(data)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def upstream(binary: str, variable: str) -> Path:
    """One of upstream's Go binaries (`mistry`, `mistryd`): $variable, else
    ../shared/upstream/<binary> beside the repository."""
    path = Path(os.environ.get(variable) or REPO.parent / "shared" / "upstream" / binary)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"upstream's `{binary}` is not at {path}: set {variable} to its path "
                           f"(../shared/upstream/{binary} on these machines)")
    return path


def process_tree(pid: int) -> list[int]:
    """`pid` and every process under it (mistryd's API workers and builders)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def memory_mb(pid: int) -> tuple[float, float]:
    """(PSS, RSS) of the process tree under `pid`, in MB. PSS shares each page among the processes
    that map it (forked children share the code's pages): their sum is the memory the tree uses.
    RSS counts a shared page in every process."""
    pss = rss = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key == "Pss":
                        pss += int(value.split()[0])
                    elif key == "Rss":
                        rss += int(value.split()[0])
        except OSError:  # it ended meanwhile
            continue
    return pss / 1024, rss / 1024


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """A command that must succeed; its output is shown when it does not."""
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {out.returncode}:\n"
                           f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out


class HttpClient:
    """One keep-alive connection, as a real client holds: the figures are the server's time plus
    loopback, not TCP handshakes."""

    def __init__(self, port: int, timeout: float = 300, host: str = "127.0.0.1"):
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()  # the server closed an idle keep-alive connection: reconnect
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, accept: str = "*/*") -> bytes:
        status, data = self.request("GET", path, headers={"Accept": accept})
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {data[:300]!r}")
        return data

    def post_job(self, body: dict) -> dict:
        status, data = self.request("POST", "/jobs", json.dumps(body).encode(),
                                    {"Content-Type": "application/json"})
        if status != 201:
            raise RuntimeError(f"POST /jobs {body}: {status} {data[:500]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


@dataclass
class BenchServer:
    """The real `mistryd --config FILE` on a free loopback port."""

    home: Path
    projects_path: Path
    build_path: Path
    extra: dict
    profile_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    rsync_port: int | None = None
    proc: subprocess.Popen | None = None
    profiler: subprocess.Popen | None = None
    clients: list[HttpClient] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.port = free_port(self.host)
        config = {"projects_path": str(self.projects_path), "build_path": str(self.build_path),
                  "addr": f"{self.host}:{self.port}", "job_concurrency": 2, "job_backlog": 100,
                  **self.extra}
        if config.pop("rsync", False):
            self.rsync_port = free_port(self.host)
            config["rsync_addr"] = f"{self.host}:{self.rsync_port}"
        path = self.home / "config.json"
        path.write_text(json.dumps(config, indent=2))
        with open(self.home / "mistryd.log", "wb") as log:
            self.proc = subprocess.Popen([str(BIN / "mistryd"), "--config", str(path)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mistryd exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"mistryd did not listen within 60 s:\n{self.log_tail()}")
        self.client().get("/healthz")
        if self.profile_file is not None:
            self.profile_file.parent.mkdir(parents=True, exist_ok=True)
            self.profiler = subprocess.Popen(
                [str(BIN / "py-spy"), "record", "--pid", str(self.pid), "--subprocesses",
                 "--rate", "250",
                 "--format", "raw", "--threads", "--nonblocking", "-o", str(self.profile_file)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self) -> HttpClient:
        c = HttpClient(self.port, host=self.host)
        self.clients.append(c)
        return c

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.home / "mistryd.log").read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def rss_mb(self) -> float:
        """The supervisor's own RSS."""
        return rss_mb(self.pid)

    def memory_mb(self) -> tuple[float, float]:
        """(PSS, RSS) of the whole server: the supervisor, its API workers and builders."""
        return memory_mb(self.pid)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of GET /metrics (0 when the series does not exist yet)."""
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                       if labels else "")
        for line in self.client().get("/metrics").decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key == want:
                return float(value)
        return 0.0

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.profiler is not None:
            try:
                self.profiler.wait(30)  # py-spy writes its file when the target exits
            except subprocess.TimeoutExpired:
                self.profiler.kill()
        remove_containers(self.build_path)

    def build(self, project: str, **fields) -> dict:
        """A sync `POST /jobs` that must succeed."""
        info = self.client().post_job({"project": project, **fields})
        if info.get("ExitCode") != 0:
            raise RuntimeError(f"build of {project} failed: {json.dumps(info)[:2000]}")
        return info

    def artifacts(self, info: dict) -> Path:
        return self.build_path / info["Project"] / "ready" / info["ID"] / "data" / "artifacts"


def remove_containers(build_path: Path) -> None:
    """Containers a stopped server left (it removes its own; this is for a killed one)."""
    from mistryd.docker_runner import INSTANCE_LABEL

    instance = hashlib.sha256(str(build_path).encode()).hexdigest()[:16]
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={INSTANCE_LABEL}={instance}"],
                         check=False, capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], check=False, capture_output=True)


def remove_images(build_path: Path) -> None:
    """The images a bench server built (they carry its instance label)."""
    from mistryd.docker_runner import remove_instance_images

    remove_instance_images(build_path)


def nonce() -> str:
    return uuid.uuid4().hex[:12]
