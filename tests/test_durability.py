"""Issue 6, durability: a record is replaced atomically, a crash while writing leaves the old one whole, and a
rerun with the same --out never destroys an earlier paid result (it is kept beside, under a timestamped name,
with the files it names)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import poe_request_orchestrator as poe
import pytest
from cli_runner import ORCHESTRATOR, cli_env, validate_record
from conftest import EMULATOR_KEY, use_in_process
from poe_emulator import PoeEmulator, Reply

KEPT = re.compile(r"^fox\.\d{8}T\d{6}Z(-\d+)?\.json$")
IMAGE = ("--mode", "image", "--model", "gpt-image-1")
IMAGE_ROW = {"mode": "image", "model": "nano-banana-2", "prompt": "b"}


def leftovers(folder: Path) -> list[str]:
    """Temp files a write could leave behind: .<name>.*.tmp and *.part."""
    return [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))]


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


# --- atomic replacement, in-process ---------------------------------------------------------------------


def _fail_rename(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail_fsync(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize(("target", "broken"), [("replace", _fail_rename), ("fsync", _fail_fsync)])
def test_a_failed_write_leaves_the_old_record_whole_and_no_temp_file(
    tmp_path: Path, monkeypatch, target: str, broken: Callable[..., None]
) -> None:
    path = tmp_path / "fox.json"
    old = json.dumps({"ok": True, "text": "the paid answer " * 1000})
    poe.atomic_write_text(path, old)
    monkeypatch.setattr(poe.os, target, broken)
    with pytest.raises(OSError):
        poe.atomic_write_text(path, json.dumps({"ok": False}))
    assert path.read_text(encoding="utf-8") == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox.json"]


def test_a_reader_never_sees_a_partly_written_record(tmp_path: Path) -> None:
    path = tmp_path / "fox.json"
    writer = poe.RecordWriter(path, keep_earlier=False)
    writer.write(json.dumps({"n": -1}))
    stop = threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(json.loads(path.read_text(encoding="utf-8"))["n"])  # raises on a torn file

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(150):
            writer.write(json.dumps({"n": n, "pad": "x" * (n % 7) * 50_000}))
    finally:
        stop.set()
        reader.join()
    assert seen and seen == sorted(seen) and load(path)["n"] == 149
    assert leftovers(tmp_path) == []


def test_kept_names_never_overwrite_each_other(tmp_path: Path) -> None:
    path = tmp_path / "fox.json"
    kept = []
    for n in range(3):
        path.write_text(json.dumps({"n": n, "outputs": []}), encoding="utf-8")
        os.utime(path, (1_800_000_000, 1_800_000_000))  # the same second every time
        kept.append(poe.keep_previous(path))
    assert [p.name for p in kept] == ["fox.20270115T080000Z.json", "fox.20270115T080000Z-2.json",
                                      "fox.20270115T080000Z-3.json"]  # fmt: skip
    assert [load(p)["n"] for p in kept] == [0, 1, 2]
    assert not path.exists()


# --- crashes in the middle of a run -----------------------------------------------------------------------


@pytest.fixture
def in_process(emulator: PoeEmulator, tmp_path: Path, monkeypatch) -> PoeEmulator:
    use_in_process(monkeypatch, tmp_path, emulator, EMULATOR_KEY)
    return emulator


def test_a_crash_writing_the_final_record_keeps_the_earlier_result_whole(
    in_process: PoeEmulator, tmp_path: Path, capsys, monkeypatch
) -> None:
    args = ["--mode", "llm", "--model", "gpt-5", "--out", "fox.json"]
    assert poe.main([*args, "--prompt", "first"]) == 0
    earlier = (tmp_path / "fox.json").read_text(encoding="utf-8")
    real_write = poe.atomic_write_text
    writes: list[str] = []

    def crash_on_the_final_write(path: Path, text: str, **options: bool) -> None:
        if Path(path).name == "fox.json":
            writes.append(json.loads(text)["state"])
            if len(writes) == 2:  # the pending record was written; the final one is not
                raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, text, **options)

    monkeypatch.setattr(poe, "atomic_write_text", crash_on_the_final_write)
    capsys.readouterr()
    code = poe.main([*args, "--prompt", "second"])
    out, err = capsys.readouterr()
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    assert out == "Echo from gpt-5: second\n"  # the paid answer still reaches the user
    assert writes == ["pending", "succeeded"]
    [kept] = [p for p in tmp_path.iterdir() if KEPT.match(p.name)]
    assert kept.read_text(encoding="utf-8") == earlier  # the earlier paid answer, byte for byte
    pending = load(tmp_path / "fox.json")  # whole, never torn
    validate_record(pending)
    assert pending["state"] == "pending" and pending["prompt"] == "second"
    assert leftovers(tmp_path) == []
    assert len(in_process.paid_calls()) == 2


def test_refused_input_and_dry_runs_leave_an_existing_record_alone(
    in_process: PoeEmulator, tmp_path: Path, capsys
) -> None:
    assert poe.main([*IMAGE, "--prompt", "p", "--out", "fox.json"]) == 0
    before = (tmp_path / "fox.json").read_bytes()
    assert poe.main([*IMAGE, "--prompt", "p", "--param", "aspect=7:3", "--out", "fox.json"]) == 2
    assert poe.main([*IMAGE, "--prompt", "p", "--params", "{oops", "--out", "fox.json"]) == 2
    assert poe.main([*IMAGE, "--prompt", "p", "--dry-run", "--out", "fox.json"]) == 0
    assert (tmp_path / "fox.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["fox.json"]
    assert len(in_process.paid_calls()) == 1


# --- reruns through the real CLI ----------------------------------------------------------------------------


def test_reruns_keep_every_earlier_result_with_its_files(cli, emulator: PoeEmulator, tmp_path: Path) -> None:
    emulator.image_shape = "b64_json"  # the image exists only in the answer: losing the file loses it
    first = cli(*IMAGE, "--prompt", "first", "--out", "out/fox.json")
    second = cli(*IMAGE, "--prompt", "second", "--out", "out/fox.json")
    emulator.script("POST", "/v1/images", Reply(500, body="<html>down</html>"))
    third = cli(*IMAGE, "--prompt", "third", "--max-retries", "0", "--out", "out/fox.json")
    assert (first.code, second.code, third.code) == (0, 0, 7)
    assert "kept the earlier record as out/fox." in second.stderr and "kept the earlier record" in third.stderr
    folder = tmp_path / "out"
    current = load(folder / "fox.json")
    assert current["prompt"] == "third" and current["state"] == "failed"
    kept = sorted((p for p in folder.iterdir() if KEPT.match(p.name)), key=lambda p: load(p)["started_at"])
    assert [load(p)["prompt"] for p in kept] == ["first", "second"]
    for path in kept:
        record = load(path)
        validate_record(record)
        [output] = record["outputs"]
        saved = tmp_path / output["path"]
        assert saved.name == path.stem + ".png"  # renamed with its record, not overwritten by the rerun
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == output["sha256"]
    assert not (folder / "fox.png").exists()  # the failed run made no image; the earlier ones moved aside
    assert leftovers(tmp_path) == []
    assert len(emulator.paid_calls()) == 3


def test_batch_rerun_with_force_keeps_each_lines_earlier_record(cli, emulator: PoeEmulator, tmp_path: Path) -> None:
    rows = [{"id": "fox", "mode": "llm", "model": "gpt-5", "prompt": "a"}, {"id": "owl", **IMAGE_ROW}]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert cli("--batch", "jobs.jsonl").code == 0
    folder = tmp_path / "outputs" / "jobs"
    earlier = {name: (folder / name).read_text(encoding="utf-8") for name in ("fox.json", "owl.json")}
    assert cli("--batch", "jobs.jsonl", "--force").code == 0
    for name, text in earlier.items():
        stem = name.removesuffix(".json")
        [kept] = [p for p in folder.iterdir() if re.fullmatch(rf"{stem}\.\d{{8}}T\d{{6}}Z(-\d+)?\.json", p.name)]
        assert load(kept)["started_at"] == json.loads(text)["started_at"]
        assert load(folder / name)["started_at"] != json.loads(text)["started_at"]
    assert len(emulator.paid_calls()) == 4


def test_a_killed_rerun_leaves_a_whole_pending_record_and_the_earlier_one_kept(
    cli, emulator: PoeEmulator, tmp_path: Path
) -> None:
    args = ["--mode", "llm", "--model", "gpt-5", "--out", "fox.json"]
    assert cli(*args, "--prompt", "first").code == 0
    earlier = (tmp_path / "fox.json").read_text(encoding="utf-8")
    emulator.script("POST", "/v1/chat/completions", Reply(200, json={}, delay=30))
    proc = subprocess.Popen(
        [sys.executable, str(ORCHESTRATOR), *args, "--prompt", "second"],
        cwd=tmp_path,
        env=cli_env(emulator.base_url, EMULATOR_KEY, tmp_path / ".cache"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while len(emulator.paid_calls()) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert len(emulator.paid_calls()) == 2
    finally:
        proc.send_signal(signal.SIGKILL)  # no handler runs: only what was on disk before the request counts
        proc.wait(timeout=30)
    [kept] = [p for p in tmp_path.iterdir() if KEPT.match(p.name)]
    assert kept.read_text(encoding="utf-8") == earlier
    pending = load(tmp_path / "fox.json")
    validate_record(pending)
    assert pending["state"] == "pending" and pending["prompt"] == "second"
    assert pending["request"]["body"]["messages"][-1]["content"] == "second"  # what was sent, for the bill
    assert leftovers(tmp_path) == []
