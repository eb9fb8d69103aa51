"""Shared pieces of the benchmarks: paths, the in-process emulator, child processes, statistics, figures.

Every timing is the wall time of a fresh child process (``time.perf_counter`` around ``Popen`` and
``os.wait4``); ``os.wait4`` also gives that child's own peak RSS, so no wrapper or psutil is needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
ORCHESTRATOR = ROOT / "scripts" / "poe_request_orchestrator.py"
RAW_SCRIPT = BENCH_DIR / "raw_httpx_request.py"
RAW_BATCH_SCRIPT = BENCH_DIR / "raw_httpx_batch.py"
MODULE_PROBE = BENCH_DIR / "module_probe.py"
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable
EMULATOR_KEY = "poe-bench-key-0123456789abcdef"

if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from poe_emulator import PoeEmulator  # noqa: E402 - tests/ is on sys.path from here on


class BenchmarkError(RuntimeError):
    """A benchmark could not produce a valid figure (the product failed, or answered wrongly)."""


# --------------------------------------------------------------------------------------------- emulator


@contextlib.contextmanager
def emulator(*, latency: float = 0.0, rate_limit_rps: float | None = None) -> Iterator[PoeEmulator]:
    """A fresh in-process emulator on a random local port (fresh counters for every figure)."""
    emu = PoeEmulator(EMULATOR_KEY, latency=latency, rate_limit_rps=rate_limit_rps).start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        emu.stop()


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed afterwards (downloads included)."""
    path = Path(tempfile.mkdtemp(prefix=f"poe-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def cli_env(base_url: str, cache_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI child: the emulator's URL and key, a private catalogue cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POE_")}
    env.update(POE_BASE_URL=base_url, POE_API_KEY=EMULATOR_KEY, POE_CACHE_DIR=str(cache_dir), PYTHONIOENCODING="utf-8")
    env.update(extra)
    return env


def orchestrator(*args: str) -> list[str]:
    return [PYTHON, str(ORCHESTRATOR), *args]


# --------------------------------------------------------------------------------------------- children


@dataclass
class ChildRun:
    """One finished child process."""

    argv: list[str]
    returncode: int
    wall_s: float
    max_rss_kb: int
    stdout: str
    stderr: str

    def check(self, what: str) -> ChildRun:
        """Raise BenchmarkError unless the child exited 0."""
        if self.returncode != 0:
            tail = "\n".join(self.stderr.strip().splitlines()[-5:])
            raise BenchmarkError(f"{what}: exit code {self.returncode}\n{tail}")
        return self


def run_child(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> ChildRun:
    """Run one child to completion; its wall time and its own peak RSS (``os.wait4``), output captured."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=dict(env) if env else None, cwd=cwd
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        return ChildRun(
            argv=list(argv),
            returncode=proc.returncode,
            wall_s=wall,
            max_rss_kb=int(usage.ru_maxrss),  # kilobytes on Linux
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
        )


# --------------------------------------------------------------------------------------------- statistics


@dataclass
class Sample:
    """Repeated measurements of one quantity."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def total(self) -> float:
        return sum(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def spread(self, unit: str = "s", digits: int = 3) -> str:
        """'0.412 s (0.398–0.470, n=7)'."""
        unit = f" {unit}" if unit else ""
        if self.n == 1:
            return f"{self.median:.{digits}f}{unit} (n=1)"
        return f"{self.median:.{digits}f}{unit} ({self.low:.{digits}f}–{self.high:.{digits}f}, n={self.n})"

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n, "values": self.values}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


# --------------------------------------------------------------------------------------------- figures

MET, MISSED, INFO = "met", "MISSED", "info"


@dataclass
class Figure:
    """One line of the results table."""

    section: str
    name: str
    measured: str
    target: str = "—"
    verdict: str = INFO
    value: float | None = None  # the headline number (a ratio, a rate or megabytes)
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(ok: bool) -> str:
    return MET if ok else MISSED


def load_average() -> list[float]:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return []


def log(text: str) -> None:
    """Progress notes go to stderr; the table goes to stdout."""
    print(text, file=sys.stderr, flush=True)
