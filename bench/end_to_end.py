"""3. Cache hit, end to end: `mistry build` (the real client, a new process each time, as a user
runs it) of a cached build with a 200 MB artifact into an empty target, per transport, against a
raw `cp` of the same file on the same disk."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .harness import BIN, Env, sh
from .stats import Row, Summary, interleaved

MEASUREMENT = "3 end to end"
CLIENT_IMPORTS = "import mistry_client.cli"
HTTP_WITHIN = 1.5


def run(env: Env) -> list[Row]:
    mib = env.scale.size(200, 4)
    srv = env.server({"artifact": 0}, "end-to-end", rsync=True)
    info = srv.build("artifact", params={"mib": str(mib)})
    source = srv.artifacts(info) / "big.bin"
    targets = env.dir("targets")
    counter = iter(range(1_000_000))

    def target() -> Path:
        path = targets / f"t{next(counter)}"
        path.mkdir()
        return path

    def client(transport: str) -> None:
        dest = target()
        cmd = [str(BIN / "mistry"), "build", "--project", "artifact", "--target", str(dest),
               "--host", "127.0.0.1", "--port", str(srv.port), "--transport", transport]
        if transport == "rsync":
            cmd += ["--transport-port", str(srv.rsync_port)]
        sh([*cmd, "--", "--mib", str(mib)])
        _check(dest / "big.bin", source)
        shutil.rmtree(dest)

    def cp() -> None:
        dest = target()
        sh(["cp", str(source), str(dest)])
        _check(dest / "big.bin", source)
        shutil.rmtree(dest)

    srv.build("artifact", params={"mib": "0"})

    def small() -> None:
        dest = target()
        sh([str(BIN / "mistry"), "build", "--project", "artifact", "--target", str(dest),
            "--host", "127.0.0.1", "--port", str(srv.port), "--", "--mib", "0"])
        shutil.rmtree(dest)

    samples = interleaved({"cp": cp, "http": lambda: client("http"),
                           "rsync": lambda: client("rsync"), "small": small,
                           "imports": lambda: sh([sys.executable, "-c", CLIENT_IMPORTS])},
                          env.scale.reps(9, 2), warmup=1)
    base = Summary.of(samples["cp"])
    http = Row(MEASUREMENT, f"mistry build, cached {mib} MiB artifact, http", "ms",
               Summary.of(samples["http"]), "raw cp of the file", base,
               f"<= {HTTP_WITHIN}x cp", None)
    http.met = http.ratio <= HTTP_WITHIN
    rsync = Row(MEASUREMENT, f"mistry build, cached {mib} MiB artifact, rsync", "ms",
                Summary.of(samples["rsync"]), "raw cp of the file", base, "", None,
                note="upstream: rsync 256 ms for 200 MiB")
    fixed = Row(MEASUREMENT, "mistry build, cached empty artifact, http", "ms",
                Summary.of(samples["small"]), "python importing the client",
                Summary.of(samples["imports"]), "", None,
                note="the client's fixed cost: start-up, submit, log stream, job, manifest")
    return [http, rsync, fixed]


def _check(got: Path, want: Path) -> None:
    if got.stat().st_size != want.stat().st_size:
        raise RuntimeError(f"{got} has {got.stat().st_size} bytes, {want} has {want.stat().st_size}")
