"""Shared pytest fixtures: a fresh Poe emulator per test."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from poe_emulator import PoeEmulator

EMULATOR_KEY = "poe-test-key-0123456789abcdef"


@pytest.fixture
def emulator() -> Iterator[PoeEmulator]:
    """A PoeEmulator on 127.0.0.1 (random port), accepting EMULATOR_KEY; stopped after the test."""
    emu = PoeEmulator(EMULATOR_KEY).start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        emu.stop()


_UNSET = object()


@pytest.fixture
def cli(emulator: PoeEmulator, tmp_path):  # type: ignore[no-untyped-def]
    """Run the real CLI in a subprocess, in tmp_path, against the emulator (key and base URL in the env)."""
    from cli_runner import ORCHESTRATOR, run_cli

    def run(
        *args: str,
        key: str | None = EMULATOR_KEY,
        base_url: object = _UNSET,
        stdin: str | None = None,
        script=ORCHESTRATOR,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ):  # type: ignore[no-untyped-def]
        url = emulator.base_url if base_url is _UNSET else base_url
        return run_cli(
            list(args),
            cwd=tmp_path,
            base_url=url,
            key=key,
            stdin=stdin,  # type: ignore[arg-type]
            script=script,
            timeout=timeout,
            env_extra=env,
        )

    return run


def use_in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, emulator: PoeEmulator, key: str) -> None:
    """Point poe_request_orchestrator.main(), called in this process, at the emulator from tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POE_API_KEY", key)
    monkeypatch.setenv("POE_BASE_URL", emulator.base_url)
    monkeypatch.setenv("POE_CACHE_DIR", str(tmp_path / ".cache"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
