"""The results table (terminal and Markdown), results.json, and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from .stats import Row


def machine() -> dict:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                            check=False, capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "docker": docker}


def machine_line(m: dict) -> str:
    return (f"{m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
            f"Python {m['python']}, Docker {m['docker']}")


def _num(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


HEADER = ("#", "figure", "min", "median", "p99", "baseline (median)", "ratio", "target",
          "verdict")


def cells(row: Row) -> tuple[str, ...]:
    v, b = row.value, row.base
    return (row.measurement, f"{row.figure} [{row.unit}, n={v.n}]", _num(v.min), _num(v.median),
            _num(v.p99), f"{row.baseline}: {_num(b.median)} {row.unit}",
            f"{row.ratio:.2f}x", row.target or "-", row.verdict)


def markdown(rows: list[Row], m: dict, seconds: float) -> str:
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |")
    notes = [f"- {r.measurement}, {r.figure}: {r.note}" for r in rows if r.note]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = [
        f"Machine: {machine_line(m)}. Run: {when}, {seconds:.0f} s.",
        "",
        *lines,
        "",
        verdicts(rows, {}),
    ]
    if notes:
        out += ["", "Notes:", *notes]
    return "\n".join(out) + "\n"


def verdicts(rows: list[Row], errors: dict[str, str]) -> str:
    met = sum(r.met is True for r in rows)
    missed = [r for r in rows if r.met is False]
    line = f"Targets met: {met} of {met + len(missed)}"
    line += f"; not met: {'; '.join(f'{r.measurement}, {r.figure}' for r in missed)}." \
        if missed else "."
    if errors:
        line += "\nMeasurements that failed to run: " + ", ".join(errors)
    return line


def terminal(rows: list[Row]) -> str:
    table = [HEADER, *(cells(r) for r in rows)]
    widths = [min(max(len(c[i]) for c in table), 60) for i in range(len(HEADER))]
    return "\n".join("  ".join(c[i][:60].ljust(widths[i]) for i in range(len(HEADER)))
                     for c in table)


def write(rows: list[Row], out_dir: Path, seconds: float, errors: dict[str, str]) -> str:
    m = machine()
    md = markdown(rows, m, seconds)
    if errors:
        md += "\nMeasurements that failed to run:\n" + "".join(
            f"- {name}: {err.splitlines()[-1] if err else '?'}\n" for name, err in errors.items())
    (out_dir / "results.json").write_text(json.dumps(
        {"machine": m, "seconds": round(seconds, 1), "rows": [r.to_json() for r in rows],
         "errors": errors}, indent=2) + "\n")
    body = "# Benchmark results (latest `make bench`)\n\nSee docs/performance.md for the method.\n\n"
    (out_dir / "results.md").write_text(body + md)
    return md


def compact(results: dict) -> str:
    """The short table for README.md's Performance section, from results.json."""
    lines = ["| # | figure | median | baseline (median) | ratio | target | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        unit = r["unit"]
        lines.append(f"| {r['measurement']} | {r['figure']} | {_num(r['value']['median'])} {unit} "
                     f"| {r['baseline']}: {_num(r['base']['median'])} {unit} | {r['ratio']:.2f}x "
                     f"| {r['target'] or '-'} | {r['verdict']} |")
    return "\n".join(lines) + f"\n\nMachine: {machine_line(results['machine'])}.\n"


if __name__ == "__main__":  # python -m bench.report: the README table of the latest run
    print(compact(json.loads((Path(__file__).resolve().parent / "results.json").read_text())))
