"""Run the real CLI as a subprocess against the emulator, and check what it leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATOR = ROOT / "scripts" / "poe_request_orchestrator.py"
WRAPPER = ROOT / "scripts" / "generate_nano_banana_image.py"
SCHEMA_PATH = ROOT / "references" / "record.schema.json"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    out: Path | None

    @property
    def record(self) -> dict[str, Any]:
        assert self.out is not None and self.out.exists(), f"no record at {self.out}\nstderr: {self.stderr}"
        data: dict[str, Any] = json.loads(self.out.read_text(encoding="utf-8"))
        return data

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


@cache
def record_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def validate_record(record: dict[str, Any]) -> None:
    """Every record a test produces must match the published JSON Schema."""
    errors = sorted(record_validator().iter_errors(record), key=lambda e: list(e.path))
    assert not errors, "record does not match references/record.schema.json: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5]
    )


def cli_env(base_url: str | None, key: str | None, cache_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POE_")}
    env.update(POE_CACHE_DIR=str(cache_dir), PYTHONIOENCODING="utf-8", COLUMNS="200")
    if base_url is not None:
        env["POE_BASE_URL"] = base_url
    if key is not None:
        env["POE_API_KEY"] = key
    env.update(extra)
    return env


def run_cli(
    args: list[str],
    *,
    cwd: Path,
    base_url: str | None,
    key: str | None,
    stdin: str | None = None,
    script: Path = ORCHESTRATOR,
    timeout: float = 60,
    env_extra: dict[str, str] | None = None,
) -> CliResult:
    """Run the script with `args` in `cwd`; validate the record it wrote (if --out was given)."""
    env = cli_env(base_url, key, cwd / ".cache", **(env_extra or {}))
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )
    out = _out_path(args, cwd)
    result = CliResult(proc.returncode, proc.stdout, proc.stderr, out)
    assert "Traceback" not in proc.stderr, proc.stderr
    if out is not None and out.exists() and out.suffix == ".json" and "--batch" not in args:
        validate_record(result.record)
    return result


# A CI shell may start the tests with SIGINT ignored, and a child inherits that: give the script Python's own
# Ctrl-C handling back before running it as __main__ (no preexec_fn: the emulator's threads make fork hooks unsafe).
WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def start_cli(args: list[str], *, cwd: Path, base_url: str, key: str, text: bool = True) -> subprocess.Popen:
    """Start the CLI in the background, ready to take a Ctrl-C (SIGINT) from the test."""
    return subprocess.Popen(
        [sys.executable, "-c", WITH_CTRL_C, str(ORCHESTRATOR), *args],
        cwd=cwd,
        env=cli_env(base_url, key, cwd / ".cache"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=text,
        encoding="utf-8" if text else None,
    )


def _out_path(args: list[str], cwd: Path) -> Path | None:
    for i, arg in enumerate(args):
        if arg in ("--out", "-o") and i + 1 < len(args):
            path = Path(args[i + 1])
            return path if path.is_absolute() else cwd / path
    return None
