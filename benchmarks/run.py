"""Benchmarks of scripts/poe_request_orchestrator.py against the in-process Poe emulator (issue 5).

    uv run benchmarks/run.py                      # all four, full sizes (about 7 minutes on 2 cores)
    uv run benchmarks/run.py --quick              # smoke run: 40 batch requests, a 50 MB download
    uv run benchmarks/run.py --only startup,batch # some of: startup, batch, ratelimit, download

Each figure is a ratio measured in this run (against ``python -c pass``, a raw httpx script, the ideal
N×L/C, the emulator's rate R, or a small download); timings are medians of repeated child processes,
printed with their min–max. The table goes to stdout, progress to stderr, and everything measured to
benchmarks/results/latest.json (and latest.md, the README table).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import bench_batch
import bench_download
import bench_ratelimit
import bench_startup
from harness import INFO, MISSED, ORCHESTRATOR, RESULTS_DIR, ROOT, BenchmarkError, Figure, load_average, log

BENCHMARKS: dict[str, Callable[[int, bool], list[Figure]]] = {
    "startup": bench_startup.run,
    "batch": bench_batch.run,
    "ratelimit": bench_ratelimit.run,
    "download": bench_download.run,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help=f"run only these benchmarks ({', '.join(BENCHMARKS)}); repeatable or comma-separated",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions (a smoke run)")
    parser.add_argument("--repeat", type=int, default=7, help="repetitions of each timing (default 7; at least 3)")
    args = parser.parse_args(argv)
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.only = names or list(BENCHMARKS)
    args.repeat = max(3, args.repeat)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    load_before = load_average()
    mode = " (quick)" if args.quick else ""
    log(f"benchmarks: {', '.join(args.only)}{mode}; {os.cpu_count()} CPUs, load average {load_before}")
    product_before = product_fingerprint()
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    durations: dict[str, float] = {}
    for name in args.only:
        t0 = time.perf_counter()
        try:
            section = BENCHMARKS[name](args.repeat, args.quick)
        except BenchmarkError as exc:
            errors[name] = str(exc)
            log(f"{name}: FAILED: {exc}")
            continue
        durations[name] = round(time.perf_counter() - t0, 1)
        figures.extend(section)
        print_table(section, title=f"{name} ({durations[name]} s)")
    results = {
        "date": started.isoformat(timespec="seconds"),
        "command": "uv run benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "repeat": args.repeat,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "product": product_before,
        "product_changed_during_run": product_fingerprint() != product_before,
        "durations_s": durations,
        "errors": errors,
        "figures": [f.as_dict() for f in figures],
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "latest.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (RESULTS_DIR / "latest.md").write_text(markdown(figures, results), encoding="utf-8")
    if len(args.only) > 1:
        print_table(figures, title="all figures")
    if results["product_changed_during_run"]:
        log("warning: scripts/ or the locked environment changed during the run; run again for figures of one version")
    missed = [f for f in figures if f.verdict == MISSED]
    log(
        f"\n{len(figures)} figures, {len(missed)} target(s) missed, {len(errors)} benchmark(s) failed; "
        f"load {load_before} → {results['machine']['load_average_after']}; "
        f"written to {RESULTS_DIR / 'latest.json'} and latest.md"
    )
    return 1 if errors else 0


def product_fingerprint() -> dict[str, str]:
    """What was measured: the git commit, and hashes of the orchestrator and uv.lock (edits show up)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "git_head": head.stdout.strip() or "unknown",
        "orchestrator_sha256": hashlib.sha256(ORCHESTRATOR.read_bytes()).hexdigest()[:16],
        "uv_lock_sha256": hashlib.sha256((ROOT / "uv.lock").read_bytes()).hexdigest()[:16],
    }


def print_table(figures: list[Figure], title: str) -> None:
    rows = [(f.section, f.name, f.measured, f.target, f.verdict) for f in figures]
    headers = ("section", "figure", "measured", "target", "verdict")
    widths = [min(max(len(r[i]) for r in [headers, *rows]), 70) for i in range(3)]
    print(f"\n== {title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers[:3], widths, strict=True)), "| target | verdict")
    for row in rows:
        cells = [_wrap(c, w) for c, w in zip(row[:3], widths, strict=True)]
        height = max(len(c) for c in cells)
        for i in range(height):
            line = "  ".join((c[i] if i < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True))
            print(line + (f" | {row[3]} | {row[4]}" if i == 0 else ""))
    sys.stdout.flush()


def _wrap(text: str, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split(" "):
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return [*lines, current]


def markdown(figures: list[Figure], results: dict[str, Any]) -> str:
    """The README table: figure, measured, target, verdict."""
    machine = results["machine"]
    lines = [
        f"Figures from `{results['command'].strip()}` on {results['date'][:10]} "
        f"({machine['cpus']} CPUs, load average {machine['load_average_before']} before, "
        f"{machine['load_average_after']} after; Python {machine['python']}; commit {results['product']['git_head']}, "
        f"orchestrator sha256 {results['product']['orchestrator_sha256']}).",
        "",
        "| benchmark | figure | measured | target | verdict |",
        "|---|---|---|---|---|",
    ]
    for f in figures:
        cells = [f.section, f.name, f.measured, f.target, "—" if f.verdict == INFO else f.verdict]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
