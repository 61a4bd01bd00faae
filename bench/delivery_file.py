"""Issue 11, figures 1 and 4: `mistry build` (a new process, http) of a cached build with one
200 MiB artifact, and of one with one empty artifact (the client's fixed cost), each beside
upstream's Go client fetching the same cached build over rsync, taking turns. (Not an empty
artifacts folder: upstream's client asks rsync for `artifacts/*`, which fails on an empty one.)"""

from __future__ import annotations

import shutil

from .delivery import Expected, Targets, builds_started, run_timed, side_by_side
from .harness import Env
from .stats import Row, Summary

WITHIN_UPSTREAM = 0.8
FIXED_COST_MS = 100


def run(env: Env) -> list[Row]:
    mib = env.scale.size(200, 2)
    side = side_by_side(env, {"artifact": 0}, "delivery-1-4")
    big, empty = {"mib": str(mib)}, {"mib": "0"}
    expect = {"big": Expected(side.srv.artifacts(side.srv.build("artifact", params=big))),
              "empty": Expected(side.srv.artifacts(side.srv.build("artifact", params=empty)))}
    assert expect["empty"].bytes == 0 and expect["empty"].files == 1, "the small build is not empty"
    commands = {
        "mistry big": lambda t: side.mistry("artifact", big, t),
        "upstream big": lambda t: side.upstream_rsync("artifact", big, t),
        "mistry empty": lambda t: side.mistry("artifact", empty, t),
        "upstream empty": lambda t: side.upstream_rsync("artifact", empty, t),
    }
    targets = Targets(env)
    builds = builds_started(side.srv)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    reps = env.scale.reps(9, 2)
    for rep in range(reps + 1):  # the first round warms up (page cache, the server's manifest)
        for name, command in commands.items():
            target = targets.new()
            ms = run_timed(command(target))
            expect[name.split()[1]].check(target)
            shutil.rmtree(target)
            if rep:
                samples[name].append(ms)
    if builds_started(side.srv) != builds:
        raise RuntimeError("a fetch started a build: the figures are not of cache hits")

    upstream_big = Summary.of(samples["upstream big"])
    one_file = Row("11.1 one file", f"mistry build, cached {mib} MiB artifact, http", "ms",
                   Summary.of(samples["mistry big"]), "upstream's client, rsync", upstream_big,
                   f"<= {WITHIN_UPSTREAM}x upstream", None,
                   note="whole commands, new processes; upstream's client against the same mistryd "
                        "(the same cache hit) and a plain rsync daemon on port 873")
    one_file.met = one_file.ratio <= WITHIN_UPSTREAM
    mistry_empty = Summary.of(samples["mistry empty"])
    fixed = Row("11.4 fixed cost", "mistry build, cached build, one empty artifact, http", "ms",
                mistry_empty, "upstream's client, rsync", Summary.of(samples["upstream empty"]),
                f"<= {FIXED_COST_MS} ms", mistry_empty.median <= FIXED_COST_MS)
    return [one_file, fixed]
