"""6. Build overhead: the wall time of a new (uncached) build of a trivial project whose image is
built, through sync `POST /jobs`, against a raw `docker run --rm` of the same image doing the same
work (the same /data layout bind-mounted, the same user)."""

from __future__ import annotations

import os

from mistryd.docker_runner import image_tag, instance_id
from mistryd.projects import Projects

from .harness import Env, nonce, sh
from .stats import Row, Summary, interleaved

MEASUREMENT = "6 build overhead"
MAX_OVERHEAD_MS = 300.0


def run(env: Env) -> list[Row]:
    srv = env.server({"hit": 0}, "build-overhead")
    srv.build("hit")  # builds the image
    image = image_tag("hit", Projects(srv.projects_path).fingerprint("hit"),
                      instance_id(srv.build_path))
    c = srv.client()
    work = env.dir("docker-run")
    counter = iter(range(1_000_000))
    timings: list[dict] = []

    def new_build() -> None:
        info = c.post_job({"project": "hit", "params": {"n": nonce()}})
        if info["ExitCode"] != 0 or info["Cached"]:
            raise RuntimeError(f"not a new successful build: {info}")
        timings.append(info.get("Timings") or {})

    def docker_run() -> None:
        data = work / f"r{next(counter)}"
        for sub in ("params", "artifacts", "cache"):
            (data / sub).mkdir(parents=True)
        (data / "params" / "n").write_text(nonce())
        sh(["docker", "run", "--rm", "--user", str(os.getuid()), "-v", f"{data}:/data", image])
        if not (data / "artifacts" / "result.txt").exists():
            raise RuntimeError("the raw docker run made no artifact")

    samples = interleaved({"docker": docker_run, "build": new_build}, env.scale.reps(12, 2),
                          warmup=1)
    row = Row(MEASUREMENT, "new build, image built (sync POST /jobs)", "ms",
              Summary.of(samples["build"]), "raw docker run --rm", Summary.of(samples["docker"]),
              f"overhead < {MAX_OVERHEAD_MS:g} ms", None)
    overhead = row.value.median - row.base.median
    row.met = overhead < MAX_OVERHEAD_MS
    parts = {k: sorted(t.get(k, 0) for t in timings)[len(timings) // 2] * 1e3
             for k in ("queued", "image", "run")}
    row.note = (f"overhead {overhead:+.0f} ms; server's own timings (median): "
                + ", ".join(f"{k} {v:.0f} ms" for k, v in parts.items()))
    return [row]
