"""2. Batch: N llm requests at 100 ms latency, concurrency 1, 4 and 16, against the ideal N×L/C and
against N sequential CLI processes (measured on a subset and scaled, as the figure says)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness import (
    PYTHON,
    RAW_BATCH_SCRIPT,
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

SECTION = "batch"
LATENCY_S = 0.1
CONCURRENCIES = (1, 4, 16)
TARGET_EFFICIENCY = 0.90  # at concurrency 16
MODEL = "gpt-5"


def write_jsonl(path: Path, n: int) -> None:
    lines = [
        json.dumps({"id": f"r{i:03d}", "mode": "llm", "model": MODEL, "prompt": f"Request {i}: say hi"})
        for i in range(1, n + 1)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run(repeat: int, quick: bool) -> list[Figure]:
    n = 40 if quick else 200
    seq_n = 10 if quick else 20
    reps = {1: 1 if quick else 3, 4: 3 if quick else repeat, 16: 3 if quick else repeat}
    walls = {c: Sample() for c in CONCURRENCIES}
    engine = {c: Sample() for c in CONCURRENCIES}
    retries = {c: 0 for c in CONCURRENCIES}
    raw_walls = {c: Sample() for c in CONCURRENCIES}
    raw_inner = {c: Sample() for c in CONCURRENCIES}
    seq = Sample()
    with emulator(latency=LATENCY_S) as emu, scratch_dir("batch") as tmp:
        env = cli_env(emu.base_url, tmp / "cache")
        jsonl = tmp / "requests.jsonl"
        write_jsonl(jsonl, n)
        # Warm-up (untimed): .pyc files and the catalogue cache, as for any second run of the day.
        single = ["--mode", "llm", "--model", MODEL, "--quiet"]
        run_child(orchestrator(*single, "--prompt", "warm-up", "--out", str(tmp / "warm.json")), env=env).check("warm")
        log(f"batch: {n} requests x concurrency {CONCURRENCIES}, reps {reps}, interleaved")
        for rep in range(max(reps.values())):
            for c in CONCURRENCIES:
                if rep >= reps[c]:
                    continue
                out = tmp / f"c{c}-{rep}"
                argv = orchestrator(
                    "--batch", str(jsonl), "--concurrency", str(c), "--out", str(out / "batch-summary.json")
                )
                paid_before = len(emu.paid_calls())
                child = run_child([*argv, "--quiet", "--force"], env=env, cwd=tmp).check(f"batch concurrency {c}")
                summary = json.loads((out / "batch-summary.json").read_text(encoding="utf-8"))
                paid = len(emu.paid_calls()) - paid_before
                if summary["succeeded"] != n or paid != n:
                    raise BenchmarkError(f"concurrency {c}: {summary['succeeded']} succeeded, {paid} paid calls of {n}")
                walls[c].add(child.wall_s)
                engine[c].add(float(summary["duration_s"]))
                retries[c] += int(summary["retries"])
                shutil.rmtree(out)
                raw = run_child([PYTHON, str(RAW_BATCH_SCRIPT), str(n), str(c), MODEL], env=env).check("raw batch")
                raw_walls[c].add(raw.wall_s)
                raw_inner[c].add(float(json.loads(raw.stdout)["elapsed_s"]))
                log(
                    f"  concurrency {c:2d} rep {rep + 1}: {child.wall_s:.2f} s (batch {summary['duration_s']} s); "
                    f"raw httpx {raw.wall_s:.2f} s ({raw_inner[c].values[-1]:.2f} s)"
                )
        log(f"batch: {seq_n} sequential single-request CLI processes")
        for i in range(seq_n):
            out = tmp / "seq" / f"s{i:03d}.json"
            child = run_child(orchestrator(*single, "--prompt", f"Request {i}", "--out", str(out)), env=env, cwd=tmp)
            seq.add(child.check(f"sequential process {i}").wall_s)
    return _figures(n, seq_n, walls, engine, retries, seq, raw_walls, raw_inner)


def _figures(
    n: int,
    seq_n: int,
    walls: dict[int, Sample],
    engine: dict[int, Sample],
    retries: dict[int, int],
    seq: Sample,
    raw_walls: dict[int, Sample],
    raw_inner: dict[int, Sample],
) -> list[Figure]:
    figures = []
    for c in CONCURRENCIES:
        ideal = n * LATENCY_S / c
        eff = ratio(ideal, walls[c].median)
        eff_engine = ratio(ideal, engine[c].median)
        headline = c == max(CONCURRENCIES)
        figures.append(
            Figure(
                SECTION,
                f"{n} requests, concurrency {c}: ideal N×L/C = {ideal:.2f} s ÷ measured",
                f"{walls[c].spread(digits=2)} → {eff:.0%} of ideal "
                f"(inside the process, without start-up: {engine[c].median:.2f} s → {eff_engine:.0%}); "
                f"raw httpx from {c} thread(s), the ceiling here: {raw_walls[c].median:.2f} s → "
                f"{ratio(ideal, raw_walls[c].median):.0%} ({raw_inner[c].median:.2f} s → "
                f"{ratio(ideal, raw_inner[c].median):.0%} inside)",
                target=f"≥ {TARGET_EFFICIENCY:.0%}" if headline else "—",
                verdict=verdict(eff >= TARGET_EFFICIENCY) if headline else "info",
                value=eff,
                detail={
                    "ideal_s": ideal,
                    "wall_s": walls[c].as_dict(),
                    "batch_duration_s": engine[c].as_dict(),
                    "efficiency_wall": eff,
                    "efficiency_in_process": eff_engine,
                    "raw_httpx_wall_s": raw_walls[c].as_dict(),
                    "raw_httpx_in_process_s": raw_inner[c].as_dict(),
                    "retries": retries[c],
                },
            )
        )
    scaled = seq.median * n
    speedups = ", ".join(f"C={c} {ratio(scaled, walls[c].median):.1f}x" for c in CONCURRENCIES)
    figures.append(
        Figure(
            SECTION,
            f"{n} sequential CLI processes (median of {seq_n} processes × {n}) vs the batch",
            f"{seq.spread()} per process → {scaled:.1f} s = {ratio(n * LATENCY_S, scaled):.0%} of ideal N×L; "
            f"batch is faster by {speedups}",
            value=ratio(scaled, walls[max(CONCURRENCIES)].median),
            detail={"per_process_s": seq.as_dict(), "scaled_s": scaled, "measured_processes": seq_n},
        )
    )
    return figures
