"""1. Start-up: --help, --dry-run and one llm request end to end, against ``python -c pass`` and a raw httpx script.

All commands run interleaved, one of each per round (the order rotating), so a change in machine load
hits them alike; every figure is the median of the rounds, printed with its min–max.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    INFO,
    MODULE_PROBE,
    PYTHON,
    RAW_SCRIPT,
    BenchmarkError,
    Figure,
    Sample,
    cli_env,
    emulator,
    log,
    orchestrator,
    ratio,
    run_child,
    scratch_dir,
    verdict,
)

SECTION = "startup"
LATENCY_S = 0.1
MODEL, PROMPT = "gpt-5", "Say hi"
EXPECTED_ANSWER = f"Echo from {MODEL}: {PROMPT}"
TARGET_E2E_RATIO = 1.3

# Heavy modules worth naming, and those a path has no use for: --help prints click's plain help (typer
# alone loads neither rich nor pydantic for it); rich.progress / rich.table serve only batch and terminal
# downloads. typer loads pydantic whenever a command runs (its parameter coercion): watched, not judged.
WATCHED = (
    "httpx",
    "httpcore",
    "tenacity",
    "typer",
    "pydantic",
    "rich.console",
    "rich.progress",
    "rich.table",
    "ssl",
    "concurrent.futures",
)
NOT_NEEDED = {
    "--help": ("httpx", "tenacity", "rich.console", "rich.progress", "rich.table", "ssl"),
    "--dry-run": ("tenacity", "rich.progress", "rich.table"),
    "llm request": ("rich.progress", "rich.table"),
}


@dataclass
class Command:
    key: str
    label: str
    argv: list[str]
    fresh_cache: bool = False  # a new catalogue cache every run (the first run of the day)
    expect: str | None = None  # stdout must start with this


def run(repeat: int, quick: bool) -> list[Figure]:
    rounds = max(3, repeat if not quick else min(repeat, 5))
    with emulator(latency=LATENCY_S) as emu, scratch_dir("startup") as tmp:
        cache = tmp / "cache"
        env = cli_env(emu.base_url, cache)
        llm = ["--mode", "llm", "--model", MODEL, "--prompt", PROMPT]
        commands = [
            Command("pass", "python -c pass", [PYTHON, "-c", "pass"]),
            Command("help", "--help", orchestrator("--help"), expect="Usage:"),
            Command("dry_run", "--dry-run (llm, catalogue cached)", orchestrator(*llm, "--dry-run"), expect="{"),
            Command("e2e", "llm request end to end", orchestrator(*llm), expect=EXPECTED_ANSWER),
            Command("raw", "raw httpx script", [PYTHON, str(RAW_SCRIPT), MODEL, PROMPT], expect=EXPECTED_ANSWER),
            Command(
                "raw_plain",
                "raw httpx script, plain `import httpx`",
                [PYTHON, str(RAW_SCRIPT), MODEL, PROMPT, "--plain-import"],
                expect=EXPECTED_ANSWER,
            ),
            Command("e2e_cold", "llm request, cold catalogue cache", orchestrator(*llm), True, EXPECTED_ANSWER),
        ]
        walls: dict[str, Sample] = {c.key: Sample() for c in commands}
        rss: dict[str, Sample] = {c.key: Sample() for c in commands}
        log(f"startup: warming up, then {rounds} interleaved rounds of {len(commands)} commands")
        for c in commands:  # warm-up: .pyc files, page cache, and the catalogue cache for --dry-run and e2e
            _once(c, env, tmp, 0)
        for i in range(rounds):
            shift = i % len(commands)
            for c in commands[shift:] + commands[:shift]:
                child = _once(c, env, tmp, i + 1)
                walls[c.key].add(child.wall_s)
                rss[c.key].add(child.max_rss_kb / 1024)
        modules = {
            "--help": _modules(["--help"], env, tmp),
            "--dry-run": _modules([*llm, "--dry-run"], env, tmp),
            "llm request": _modules([*llm, "--out", str(tmp / "probe.json")], env, tmp),
        }
        imports = {
            "--help": _import_times(["--help"], env, 3),
            "--dry-run": _import_times([*llm, "--dry-run"], env, 3),
            "llm request": _import_times([*llm, "--out", str(tmp / "importtime.json")], env, 3),
        }
    return _figures(walls, rss, modules, imports)


def _once(c: Command, env: dict[str, str], tmp: Path, i: int) -> Any:
    argv = list(c.argv)
    run_env = dict(env)
    if c.key.startswith("e2e"):
        argv += ["--out", str(tmp / f"{c.key}-{i}.json")]
    if c.fresh_cache:
        run_env["POE_CACHE_DIR"] = str(tmp / f"cold-cache-{i}")
    child = run_child(argv, env=run_env, cwd=tmp).check(c.label)
    if c.expect is not None and not child.stdout.startswith(c.expect):
        raise BenchmarkError(f"{c.label}: unexpected stdout {child.stdout[:200]!r}")
    return child


def _modules(args: list[str], env: dict[str, str], tmp: Path) -> list[str]:
    out = tmp / "modules.json"
    run_child([PYTHON, str(MODULE_PROBE), str(out), *orchestrator(*args)[1:]], env=env, cwd=tmp).check(
        f"module probe {args}"
    )
    loaded: list[str] = json.loads(out.read_text(encoding="utf-8"))["modules"]
    return loaded


IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| *(\S+)")


def _import_times(args: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    """`python -X importtime`: the self time of every module summed by top-level package (ms), median of
    `runs` runs. Self times add up to the whole import time, and each package is charged only for its
    own module bodies (pydantic apart from typer, httpcore apart from httpx)."""
    per_package: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    walls: list[float] = []
    for _ in range(runs):
        child = run_child([PYTHON, "-X", "importtime", *orchestrator(*args)[1:]], env=env).check("importtime")
        walls.append(child.wall_s * 1000)
        groups: dict[str, float] = defaultdict(float)
        for line in child.stderr.splitlines():
            m = IMPORT_LINE.match(line)
            if m:
                groups[m.group(3).split(".")[0]] += int(m.group(1)) / 1000
        totals.append(sum(groups.values()))
        for name, ms in groups.items():
            per_package[name].append(ms)
    medians = {name: statistics.median(v + [0.0] * (runs - len(v))) for name, v in per_package.items()}
    top = dict(sorted(medians.items(), key=lambda kv: -kv[1])[:7])
    total, wall = statistics.median(totals), statistics.median(walls)
    return {"total_ms": total, "wall_ms": wall, "share": total / wall, "top_self_ms": top, "runs": runs}


def _figures(
    walls: dict[str, Sample],
    rss: dict[str, Sample],
    modules: dict[str, list[str]],
    imports: dict[str, dict[str, Any]],
) -> list[Figure]:
    base = walls["pass"].median
    figures = []
    detail_walls = {k: v.as_dict() for k, v in walls.items()}
    for key, label in (("help", "`--help`"), ("dry_run", "`--dry-run` (llm)")):
        r = ratio(walls[key].median, base)
        figures.append(
            Figure(
                SECTION,
                f"{label} vs `python -c pass`",
                f"{walls[key].spread()} vs {walls['pass'].spread()} = {r:.1f}x",
                value=r,
                detail={"wall_s": detail_walls[key], "baseline_s": detail_walls["pass"]},
            )
        )
    raw = walls["raw"].median
    e2e = ratio(walls["e2e"].median, raw)
    paired = Sample([a / b for a, b in zip(walls["e2e"].values, walls["raw"].values, strict=True)])
    figures.append(
        Figure(
            SECTION,
            f"llm request end to end ({LATENCY_S * 1000:.0f} ms latency) vs raw httpx script",
            f"{walls['e2e'].spread()} vs {walls['raw'].spread()} = {e2e:.2f}x "
            f"(per-round ratios {paired.low:.2f}–{paired.high:.2f})",
            target=f"≤ {TARGET_E2E_RATIO}x",
            verdict=verdict(e2e <= TARGET_E2E_RATIO),
            value=e2e,
            detail={"wall_s": detail_walls["e2e"], "raw_s": detail_walls["raw"], "paired_ratios": paired.values},
        )
    )
    cold = ratio(walls["e2e_cold"].median, raw)
    figures.append(
        Figure(
            SECTION,
            "llm request, cold catalogue cache (adds GET /models) vs raw httpx script",
            f"{walls['e2e_cold'].spread()} = {cold:.2f}x",
            value=cold,
            detail={"wall_s": detail_walls["e2e_cold"]},
        )
    )
    plain = ratio(walls["raw_plain"].median, raw)
    figures.append(
        Figure(
            SECTION,
            "raw script with a plain `import httpx` (loads httpx's CLI: click, pygments, rich) vs raw script",
            f"{walls['raw_plain'].spread()} = {plain:.2f}x",
            value=plain,
            detail={"wall_s": detail_walls["raw_plain"]},
        )
    )
    rss_text = ", ".join(f"{k} {rss[k].median:.0f}" for k in ("pass", "help", "dry_run", "e2e", "raw"))
    figures.append(
        Figure(
            SECTION,
            "peak RSS per path (MB)",
            rss_text,
            detail={k: v.as_dict() for k, v in rss.items()},
        )
    )
    for path, loaded in modules.items():
        present = set(loaded)
        watched = [m for m in WATCHED if m in present]
        extra = [m for m in NOT_NEEDED[path] if m in present]
        measured = (
            f"not needed but loaded: {', '.join(extra) or 'none'}; heavy modules loaded: {', '.join(watched)}; "
            f"{len(loaded)} modules in all"
        )
        figures.append(
            Figure(
                SECTION,
                f"imports not needed on {path} ({', '.join(NOT_NEEDED[path])})",
                measured,
                target="none loaded",
                verdict=verdict(not extra),
                value=float(len(extra)),
                detail={"watched_loaded": watched, "not_needed_loaded": extra, "module_count": len(loaded)},
            )
        )
    for path, times in imports.items():
        top = ", ".join(f"{name} {ms:.0f}" for name, ms in times["top_self_ms"].items())
        figures.append(
            Figure(
                SECTION,
                f"import time on {path} (`-X importtime` self time by package, ms, median of {times['runs']})",
                f"{times['total_ms']:.0f} ms = {times['share']:.0%} of the same runs' {times['wall_ms']:.0f} ms wall: "
                f"{top}",
                verdict=INFO,
                value=times["total_ms"],
                detail=times,
            )
        )
    return figures
