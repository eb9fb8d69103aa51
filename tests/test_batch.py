"""Issue 5 end to end: --batch through the CLI against the emulator."""

from __future__ import annotations

import json
from pathlib import Path

from poe_emulator import PoeEmulator, error_reply

LINES = [
    {"id": "fox", "mode": "image", "model": "nano-banana-2", "prompt": "fox", "params": {"aspect_ratio": "16:9"}},
    {"id": "hello", "mode": "llm", "model": "gpt-5", "prompt": "hello"},
    {"mode": "audio", "model": "lyria-3", "prompt": "loop"},
    {"id": "ski", "mode": "video", "model": "veo-3.1", "prompt": "ski", "params": {"duration": "4s"}},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_batch_runs_every_line_with_its_own_record_and_a_summary(cli, emulator: PoeEmulator, tmp_path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", LINES)
    r = cli("--batch", "jobs.jsonl", "--concurrency", "3", "--poll-interval", "0")
    assert r.code == 0, r.stderr
    folder = tmp_path / "outputs" / "jobs"
    assert sorted(p.name for p in folder.glob("*.json")) == [
        "batch-summary.json", "fox.json", "hello.json", "line-0003.json", "ski.json",
    ]  # fmt: skip
    summary = json.loads((folder / "batch-summary.json").read_text())
    assert summary["succeeded"] == 4 and summary["failed"] == 0
    assert [row["line"] for row in summary["lines"]] == [1, 2, 3, 4]
    fox = json.loads((folder / "fox.json").read_text())
    assert fox["ok"] and fox["request"]["body"]["aspect_ratio"] == "16:9"
    assert len(r.stdout.splitlines()) == 3  # one output per media line; the llm answer is in its record
    assert len(emulator.paid_calls()) == 4


def test_invalid_lines_are_all_reported_and_nothing_is_sent(cli, emulator: PoeEmulator, tmp_path) -> None:
    (tmp_path / "bad.jsonl").write_text(
        '{"mode": "llm", "model": "gpt-5", "prompt": "ok"}\n'
        "not json\n"
        '{"mode": "llm", "model": "gpt-5"}\n'
        '{"mode": "image", "model": "nano-banana-2", "prompt": "x", "params": {"bogus": 1}}\n'
    )
    r = cli("--batch", "bad.jsonl")
    assert r.code == 2
    [line] = r.error_lines
    assert "line 2: not valid JSON" in line and "line 3: 'prompt' is missing" in line
    assert emulator.paid_calls() == []
    r = cli("--batch", "bad.jsonl", "--concurrency", "2")
    assert r.code == 2


def test_parameter_errors_found_with_the_catalogue_also_stop_the_whole_batch(cli, emulator, tmp_path) -> None:
    write_jsonl(tmp_path / "b.jsonl", [LINES[1], {**LINES[0], "params": {"bogus": 1}}])
    r = cli("--batch", "b.jsonl")
    assert r.code == 2 and "line 2:" in r.error_lines[0] and "bogus" in r.error_lines[0]
    assert emulator.paid_calls() == []


def test_rerun_pays_only_for_what_failed(cli, emulator: PoeEmulator, tmp_path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", LINES[:3])
    emulator.script("POST", "/v1/chat/completions", error_reply(400, "invalid_request_error", "flaky"))
    first = cli("--batch", "jobs.jsonl", "--concurrency", "1")
    assert first.code == 11
    summary = json.loads((tmp_path / "outputs" / "jobs" / "batch-summary.json").read_text())
    assert [row["state"] for row in summary["lines"]] == ["succeeded", "failed", "succeeded"]
    paid = len(emulator.paid_calls())
    second = cli("--batch", "jobs.jsonl")
    assert second.code == 0, second.stderr
    assert len(emulator.paid_calls()) == paid + 1  # only the failed line was sent again
    summary = json.loads((tmp_path / "outputs" / "jobs" / "batch-summary.json").read_text())
    assert [row["state"] for row in summary["lines"]] == ["skipped", "succeeded", "skipped"]
    forced = cli("--batch", "jobs.jsonl", "--force")
    assert forced.code == 0 and len(emulator.paid_calls()) == paid + 4


def test_batch_from_stdin_with_json_summary(cli, emulator: PoeEmulator, tmp_path) -> None:
    stdin = "\n".join(json.dumps(r) for r in LINES[1:3])
    r = cli("--batch", "-", "--json", "--out", "runs/summary.json", stdin=stdin)
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["kind"] == "batch-summary" and summary["total"] == 2
    assert (tmp_path / "runs" / "hello.json").exists()


def test_a_429_pauses_the_whole_batch(cli, emulator: PoeEmulator, tmp_path) -> None:
    rows = [{"id": f"q{i}", "mode": "llm", "model": "gpt-5", "prompt": f"q{i}"} for i in range(8)]
    write_jsonl(tmp_path / "q.jsonl", rows)
    emulator.rate_limit_rps = 4
    r = cli("--batch", "q.jsonl", "--concurrency", "4", "--json", "--out", "q/summary.json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["succeeded"] == 8
    # every 429 was waited out (and paused the shared gate: see test_units for the gate's logic)
    assert emulator.rate_limited >= 1
    assert emulator.rate_limited == summary["retries"]
    assert summary["rate_limit_pauses"] >= 1


def test_ctrl_c_lets_requests_in_flight_finish_and_sends_no_more(emulator: PoeEmulator, tmp_path) -> None:
    import signal
    import time

    from cli_runner import start_cli, validate_record
    from conftest import EMULATOR_KEY

    rows = [{"id": f"q{i}", "mode": "llm", "model": "gpt-5", "prompt": f"q{i}"} for i in range(6)]
    write_jsonl(tmp_path / "q.jsonl", rows)
    emulator.latency = 1.5
    proc = start_cli(["--batch", "q.jsonl", "--concurrency", "2"], cwd=tmp_path, base_url=emulator.base_url,
                     key=EMULATOR_KEY)  # fmt: skip
    deadline = time.monotonic() + 30
    while len(emulator.paid_calls()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert len(emulator.paid_calls()) == 2  # nothing new was sent after Ctrl-C
    folder = tmp_path / "outputs" / "q"
    summary = json.loads((folder / "batch-summary.json").read_text())
    assert summary["cancelled"] is True and summary["succeeded"] == 2
    assert sorted(row["state"] for row in summary["lines"]) == ["cancelled"] * 4 + ["succeeded"] * 2
    for row in summary["lines"]:
        if row["state"] == "succeeded":  # the two in flight finished and kept their records
            validate_record(json.loads(Path(tmp_path / row["out"]).read_text()))
        else:
            assert row["exit_code"] == 130 and not (tmp_path / row["out"]).exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".part"))]
