"""`python -m bench [--only NAME,...] [--quick] [--out DIR] [--profile DIR]`: run the measurements,
print the table, write results.json and results.md. `--only delivery` runs issue 11's."""

from __future__ import annotations

import argparse
import compileall
import importlib
import signal
import sys
import time
import traceback
from pathlib import Path

from . import report
from .harness import Env, Scale
from .stats import Row

# Issue 5's numbering, then issue 11's (artifact delivery), issue 12's (several processes, side
# by side with upstream's server) and issue 14's (builders on other machines): one module per
# measurement.
MEASUREMENTS = ("hit_latency", "hit_throughput", "end_to_end", "incremental", "coalescing",
                "build_overhead", "scale", "memory", "delivery_file", "delivery_tree",
                "delivery_fanout", "side_by_side", "builders")
# --only takes these names for several measurements
GROUPS = {"delivery": ("delivery_file", "delivery_tree", "delivery_fanout")}
HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default="",
                        help=f"comma-separated, of: {', '.join((*MEASUREMENTS, *GROUPS))}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repetitions (the smoke test; figures mean nothing)")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json/.md go")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record every server with py-spy into this folder (raw stacks)")
    args = parser.parse_args(argv)
    names = [m for n in args.only.split(",") if n for m in GROUPS.get(n, (n,))] or list(MEASUREMENTS)
    unknown = set(names) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")

    # the client and server start as an installed package does, from bytecode compiled once
    # (pip compiles it at install): not compiled anew in every timed command where the
    # environment says not to write it (PYTHONDONTWRITEBYTECODE)
    for package in ("mistry_client", "mistryd"):
        compileall.compile_dir(HERE.parent / package, quiet=1)

    # `timeout` and CI stop with SIGTERM: clean up (containers, mounts, temp dirs) as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for name in names:
        module = importlib.import_module(f"{__package__}.{name}")
        env = Env(Scale(quick=args.quick), args.profile)
        t = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            got = module.run(env)
            rows += got
            print(report.terminal(got), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - one broken measurement must not hide the others
            errors[name] = traceback.format_exc()
            print(f"bench: {name} FAILED\n{errors[name]}", file=sys.stderr, flush=True)
        finally:
            env.close()
        print(f"bench: {name} took {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write(rows, args.out, time.monotonic() - started, errors)
    print()
    print(report.terminal(rows))
    print()
    print(report.verdicts(rows, errors))
    print(f"bench: wrote {args.out / 'results.md'} and results.json", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
