"""3. Under rate limits: the emulator allows R paid requests per second (a token bucket holding R) and
answers 429 with Retry-After beyond; a batch at concurrency 8 must get through at close to R."""

from __future__ import annotations

import json

from bench_batch import write_jsonl
from harness import BenchmarkError, Figure, Sample, cli_env, emulator, log, orchestrator, ratio, run_child, scratch_dir

SECTION = "ratelimit"
RATE_RPS = 5.0
CONCURRENCY = 8
LATENCY_S = 0.1


def run(repeat: int, quick: bool) -> list[Figure]:
    n = 20 if quick else 60
    reps = 1 if quick else min(repeat, 3)
    walls, rates, inner_rates = Sample(), Sample(), Sample()
    provoked, retries, failed, pauses = Sample(), Sample(), Sample(), Sample()
    errors: list[str] = []
    log(f"ratelimit: {n} requests at concurrency {CONCURRENCY}, R = {RATE_RPS:g}/s, {reps} run(s)")
    with scratch_dir("ratelimit") as tmp:
        jsonl = tmp / "requests.jsonl"
        write_jsonl(jsonl, n)
        for rep in range(reps):
            # A fresh emulator each run: a full bucket and a 429 count of this run alone.
            with emulator(latency=LATENCY_S, rate_limit_rps=RATE_RPS) as emu:
                env = cli_env(emu.base_url, tmp / "cache")
                # The catalogue GET is free (never rate limited); warming its cache keeps runs alike.
                run_child(orchestrator("--list-models", "--json"), env=env).check("catalogue warm-up")
                out = tmp / f"run-{rep}" / "batch-summary.json"
                argv = orchestrator("--batch", str(jsonl), "--concurrency", str(CONCURRENCY), "--out", str(out))
                child = run_child([*argv, "--quiet", "--force", "--json"], env=env, cwd=tmp)
                if child.returncode not in (0, 11):  # 11: some lines failed, which is itself a finding
                    child.check("rate-limited batch")
                summary = json.loads(child.stdout)
                if summary["succeeded"] + summary["failed"] != n:
                    raise BenchmarkError(f"rate-limited batch: summary does not account for {n} lines")
                walls.add(child.wall_s)
                rates.add(summary["succeeded"] / child.wall_s)
                inner_rates.add(summary["succeeded"] / summary["duration_s"])
                errors.extend(f"{row['id']}: {row['error']}" for row in summary["lines"] if not row["ok"])
                provoked.add(emu.rate_limited)
                retries.add(summary["retries"])
                failed.add(summary["failed"])
                pauses.add(summary.get("rate_limit_pauses", 0))
                log(
                    f"  run {rep + 1}: {child.wall_s:.2f} s, {summary['succeeded']} ok, {summary['failed']} failed, "
                    f"{emu.rate_limited} × 429, {summary['retries']} retries"
                )
    best = n / ((n - RATE_RPS) / RATE_RPS)  # the bucket starts full: R at once, then R per second
    r = ratio(rates.median, RATE_RPS)
    return [
        Figure(
            SECTION,
            f"{n} requests, concurrency {CONCURRENCY}, R = {RATE_RPS:g}/s: completed per second ÷ R",
            f"{rates.spread('req/s', 2)} = {r:.2f} R (wall {walls.spread(digits=1)}); inside the process, "
            f"without start-up: {inner_rates.median:.2f} req/s = {ratio(inner_rates.median, RATE_RPS):.2f} R "
            f"(at most {best / RATE_RPS:.2f} R possible: the bucket starts full)",
            value=r,
            detail={
                "rate": rates.as_dict(),
                "rate_in_process": inner_rates.as_dict(),
                "wall_s": walls.as_dict(),
                "best_possible_rps": best,
            },
        ),
        Figure(
            SECTION,
            "429s provoked (and retries, failed lines, rate-gate pauses)",
            f"429s {provoked.spread('', 0)} for {n} requests; retries {retries.median:.0f}; "
            f"failed lines {failed.median:.0f} (total {failed.total:.0f}); gate pauses {pauses.median:.0f} (medians)",
            value=provoked.median,
            detail={
                "rate_limited": provoked.as_dict(),
                "retries": retries.as_dict(),
                "failed": failed.as_dict(),
                "pauses": pauses.as_dict(),
                "failed_lines": errors,
            },
        ),
    ]
