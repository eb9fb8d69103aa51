"""4. Download memory: the peak RSS of the CLI process saving a small and a large media file.

The main figure is a video job (veo-3.1, ``--poll-interval 0``, ``--download``): the file is streamed from
``/v1/videos/{id}/content``. A second figure runs an image whose answer *is* the file (the emulator's
binary image shape on the direct route), which the CLI saves without ``--download``.
Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``). Every file is deleted after its run.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import (
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

SECTION = "download"
MB = 1_000_000
SMALL_MB = 5
TARGET_RSS_MB = 100.0

CASES = {
    "video": (
        "video job with --download (streamed from /videos/{id}/content)",
        ["--mode", "video", "--model", "veo-3.1", "--prompt", "A ski run", "--poll-interval", "0", "--download"],
    ),
    "image_binary": (
        "image answered as a binary body (direct route, saved without --download)",
        ["--mode", "image", "--model", "nano-banana-2", "--prompt", "A fox", "--route", "direct"],
    ),
}


def run(repeat: int, quick: bool) -> list[Figure]:
    large_mb = 50 if quick else 500
    reps = {SMALL_MB: 1 if quick else min(repeat, 3), large_mb: 1 if quick else 2}
    figures = []
    for case, (label, args) in CASES.items():
        rss: dict[int, Sample] = {SMALL_MB: Sample(), large_mb: Sample()}
        speed = Sample()
        with emulator() as emu, scratch_dir(f"download-{case}") as tmp:
            if case == "image_binary":
                emu.image_shape = "binary"
            env = cli_env(emu.base_url, tmp / "cache")
            for size_mb in (SMALL_MB, large_mb):
                emu.media_size = size_mb * MB
                for rep in range(reps[size_mb]):
                    out = tmp / f"{case}-{size_mb}-{rep}.json"
                    child = run_child(orchestrator(*args, "--out", str(out), "--quiet"), env=env, cwd=tmp)
                    child.check(f"{case} {size_mb} MB")
                    _check_and_delete(out, size_mb * MB)
                    rss[size_mb].add(child.max_rss_kb / 1024)
                    if size_mb == large_mb:
                        speed.add(size_mb / child.wall_s)
                    log(f"  {case} {size_mb} MB: peak RSS {child.max_rss_kb / 1024:.0f} MB, {child.wall_s:.1f} s")
        large = rss[large_mb].median
        figures.append(
            Figure(
                SECTION,
                f"peak RSS, {label}: {large_mb} MB vs {SMALL_MB} MB file",
                f"{rss[large_mb].spread('MB', 0)} vs {rss[SMALL_MB].spread('MB', 0)} = "
                f"{ratio(large, rss[SMALL_MB].median):.2f}x; {speed.median:.0f} MB/s end to end",
                target=f"< {TARGET_RSS_MB:.0f} MB, flat",
                verdict=verdict(large < TARGET_RSS_MB),
                value=large,
                detail={
                    "rss_mb": {str(k): v.as_dict() for k, v in rss.items()},
                    "large_mb": large_mb,
                    "small_mb": SMALL_MB,
                    "throughput_mb_s": speed.as_dict(),
                },
            )
        )
    return figures


def _check_and_delete(record_path: Path, size: int) -> None:
    """The record must list one saved file of the full size; the file is deleted at once."""
    record = json.loads(record_path.read_text(encoding="utf-8"))
    outputs = [o for o in record.get("outputs") or [] if o.get("path")]
    try:
        if not record.get("ok") or len(outputs) != 1 or outputs[0].get("bytes") != size:
            raise BenchmarkError(f"{record_path.name}: expected one saved file of {size} bytes, got {outputs}")
    finally:
        for out in outputs:
            path = Path(out["path"])
            (path if path.is_absolute() else record_path.parent / path).unlink(missing_ok=True)
