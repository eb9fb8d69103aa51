"""Issue 6, fault injection through the real CLI: every way the network, Poe or the user can break a run.

Each case checks three things: the exit code, what the record says, and how many requests reached the
emulator (a paid request is never sent twice unless the retry policy says it is safe). Cases already in
test_cli_e2e.py (before-headers drops, HTML 5xx on llm, the llm 429 storm, stuck and moderated video jobs)
are not repeated here; these extend them.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_runner import start_cli, validate_record
from conftest import EMULATOR_KEY
from poe_emulator import Drop, PoeEmulator, Reply, chat_completion, error_reply

IMAGE = ("--mode", "image", "--model", "nano-banana-2", "--prompt", "x")
LLM = ("--mode", "llm", "--model", "gpt-5", "--prompt", "hi")
VIDEO = ("--mode", "video", "--model", "veo-3.1", "--prompt", "x")


def sse(*events: Any) -> str:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)


def delta(text: str) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_part_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".part") or p.name.endswith(".tmp")]


# --- the connection ------------------------------------------------------------------------------------


def test_connection_refused_is_retried_even_for_paid_media_because_nothing_was_sent(cli, emulator: PoeEmulator) -> None:
    r = cli(*IMAGE, "--max-retries", "2", "--out", "o.json", base_url=f"http://127.0.0.1:{closed_port()}/v1")
    assert r.code == 8, r.stderr
    assert "could not connect" in r.error_lines[0] and "after 3 tries" in r.error_lines[0]
    record = r.record
    assert record["state"] == "failed" and record["error"]["kind"] == "network"
    assert record["route"]["reason"].startswith("catalogue unavailable")
    assert [a["error"] for a in record["attempts"]] == ["ConnectError: not sent"] * 3
    assert record["response"] is None and record["outputs"] == []
    assert emulator.requests == []


def test_llm_answer_cut_mid_body_is_retried_and_the_second_answer_kept(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/chat/completions", Drop("mid_body"))
    r = cli(*LLM, "--out", "o.json")
    assert r.code == 0, r.stderr
    assert r.stdout == "Echo from gpt-5: hi\n"
    attempts = r.record["attempts"]
    assert [a["status"] for a in attempts] == [None, 200]
    assert attempts[0]["error"] == "RemoteProtocolError: may have reached Poe" and attempts[0]["wait_s"] > 0
    assert len(emulator.paid_calls()) == 2  # llm answers are cheap: the documented policy retries them


def test_paid_media_answer_cut_mid_body_is_not_paid_twice(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/images", Drop("mid_body", partial_body=b'{"created": 1, "data": [{"url": "ht'))
    r = cli(*IMAGE, "--out", "o.json")
    assert r.code == 8
    assert "may already have charged" in r.error_lines[0] and "--retry-uncertain" in r.error_lines[0]
    record = r.record
    assert record["error"]["kind"] == "network" and record["state"] == "failed"
    assert record["attempts"][0]["error"] == "RemoteProtocolError: may have reached Poe"
    assert record["route"]["fell_back"] is False
    assert [c.path for c in emulator.paid_calls()] == ["/v1/images"]


def test_stream_cut_mid_body_keeps_what_arrived(cli, emulator: PoeEmulator) -> None:
    partial = sse(delta("Hello "), delta("wor")).encode()[:-20]
    emulator.script("POST", "/v1/chat/completions", Drop("mid_body", partial_body=partial))
    r = cli(*LLM, "--stream", "--out", "o.json")
    assert r.code == 8
    assert "stream was cut off" in r.error_lines[0]
    assert r.stdout == "Hello \n"
    record = r.record
    assert record["text"] == "Hello " and record["response"]["body"]["event_count"] == 1
    assert record["error"]["kind"] == "network"
    assert len(emulator.paid_calls()) == 1  # a stream that started is never re-sent


# --- malformed answers ---------------------------------------------------------------------------------


def test_truncated_json_for_paid_media_is_a_server_error_not_a_broken_url(cli, emulator: PoeEmulator) -> None:
    cut = '{"created": 1, "data": [{"url": "' + emulator.root_url + "/media/image/abc"
    emulator.script("POST", "/v1/images", Reply(200, body=cut, content_type="application/json"))
    r = cli(*IMAGE, "--out", "o.json")
    assert r.code == 7, r.stderr
    assert "not JSON" in r.error_lines[0]
    record = r.record
    assert record["outputs"] == [] and r.stdout == ""
    assert record["response"]["status"] == 200 and record["response"]["body"] == cut  # kept for inspection
    assert len(emulator.paid_calls()) == 1


@pytest.mark.parametrize(
    ("args", "replies", "paid", "status"),
    [
        pytest.param(LLM, [Reply(502)] * 3, 3, 502, id="empty-502-retried"),
        pytest.param(IMAGE, [Reply(200, body="", content_type="application/json")], 1, 200, id="empty-200-paid"),
    ],
)
def test_empty_bodies_are_server_errors(cli, emulator: PoeEmulator, args, replies, paid, status) -> None:
    emulator.script("POST", "/v1/chat/completions" if args == LLM else "/v1/images", *replies)
    r = cli(*args, "--max-retries", "2", "--out", "o.json")
    assert r.code == 7, r.stderr
    assert "(empty body)" in r.error_lines[0] or "not JSON: ''" in r.error_lines[0]
    record = r.record
    assert record["error"]["kind"] == "server" and record["response"]["status"] == status
    assert record["response"]["body"] in ("", None)
    assert [a["status"] for a in record["attempts"]] == [status] * paid
    assert len(emulator.paid_calls()) == paid


def test_html_5xx_on_paid_media_is_retried_then_succeeds(cli, emulator: PoeEmulator) -> None:
    html = "<html><head><title>503</title></head><body><h1>Service Unavailable</h1></body></html>"
    emulator.script("POST", "/v1/images", Reply(503, body=html, content_type="text/html"))
    r = cli(*IMAGE, "--out", "o.json")
    assert r.code == 0, r.stderr
    record = r.record
    assert [a["status"] for a in record["attempts"]] == [503, 200]
    assert record["outputs"][0]["url"].startswith(emulator.root_url + "/media/image/")
    assert len(emulator.paid_calls()) == 2  # a 5xx is an answer: nothing was made, nothing charged


@pytest.mark.parametrize(
    ("args", "path", "error", "code", "kind", "status"),
    [
        pytest.param(
            IMAGE, "/v1/images", {"type": "moderation_error", "message": "refused"}, 5, "rejected", 403, id="image"
        ),
        pytest.param(
            LLM, "/v1/chat/completions", {"code": "401", "message": "key revoked"}, 3, "authentication", 401, id="llm"
        ),
    ],
)
def test_error_object_inside_a_200_is_classified_and_not_retried(
    cli, emulator: PoeEmulator, args, path, error, code, kind, status
) -> None:
    emulator.script("POST", path, Reply(200, json={"error": error}))
    r = cli(*args, "--out", "o.json")
    assert r.code == code
    assert error["message"] in r.error_lines[0]
    record = r.record
    assert record["error"]["kind"] == kind and record["error"]["status"] == status
    assert record["response"]["status"] == 200 and record["response"]["body"] == {"error": error}
    assert record["outputs"] == [] and record["route"]["fell_back"] is False
    assert len(emulator.paid_calls()) == 1


def test_error_event_inside_a_stream_keeps_the_partial_text(cli, emulator: PoeEmulator) -> None:
    body = sse(delta("Partial "), {"error": {"message": "provider died", "type": "provider_error"}}, "[DONE]")
    emulator.script("POST", "/v1/chat/completions", Reply(200, body=body, content_type="text/event-stream"))
    r = cli(*LLM, "--stream", "--out", "o.json")
    assert r.code == 7
    assert "provider died" in r.error_lines[0]
    record = r.record
    assert record["text"] == "Partial " and record["error"]["kind"] == "server"
    assert len(emulator.paid_calls()) == 1


# --- slow answers ----------------------------------------------------------------------------------------


def test_slow_llm_answer_past_timeout_is_retried(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/chat/completions", Reply(200, json=chat_completion("too late"), delay=4))
    started = time.monotonic()
    r = cli(*LLM, "--timeout", "1", "--out", "o.json")
    assert r.code == 0, r.stderr
    assert time.monotonic() - started < 30
    assert r.stdout == "Echo from gpt-5: hi\n"
    attempts = r.record["attempts"]
    assert attempts[0]["error"] == "ReadTimeout: may have reached Poe" and attempts[1]["status"] == 200
    assert len(emulator.paid_calls()) == 2


def test_slow_video_poll_is_retried_and_the_job_is_created_once(cli, emulator: PoeEmulator) -> None:
    emulator.script("GET", "/v1/videos/*", Reply(200, json={}, delay=3))
    r = cli(*VIDEO, "--timeout", "1", "--poll-interval", "0", "--out", "o.json")
    assert r.code == 0, r.stderr
    record = r.record
    assert record["job"]["status"] == "completed"
    poll_errors = [a["error"] for a in record["attempts"] if a["method"] == "GET"]
    assert "ReadTimeout: may have reached Poe" in poll_errors
    assert len(emulator.paid_calls()) == 1
    assert len(emulator.calls("GET", "/v1/videos/*")) >= emulator.video_polls + 1


# --- video jobs ------------------------------------------------------------------------------------------


def test_video_job_failing_at_the_provider_is_exit_7_with_the_job_kept(cli, emulator: PoeEmulator) -> None:
    failed = {
        "id": "video_gone",
        "object": "video",
        "status": "failed",
        "progress": 40,
        "error": {"code": "internal_error", "message": "the GPU fell over"},
    }
    emulator.script("GET", "/v1/videos/*", Reply(200, json=failed))
    r = cli(*VIDEO, "--poll-interval", "0", "--out", "o.json")
    assert r.code == 7
    assert "the GPU fell over" in r.error_lines[0]
    record = r.record
    assert record["error"]["kind"] == "server" and record["error"]["type"] == "internal_error"
    assert record["job"]["status"] == "failed" and record["job"]["raw"]["error"]["code"] == "internal_error"
    assert record["outputs"] == []
    assert len(emulator.paid_calls()) == 1 and len(emulator.calls("GET", "/v1/videos/*")) == 1


def test_video_polls_failing_until_the_deadline_keep_the_job_id(cli, emulator: PoeEmulator) -> None:
    emulator.video_outcome = "stuck"
    emulator.script("GET", "/v1/videos/*", *[Reply(503, body="<html>overloaded</html>")] * 200)
    r = cli(*VIDEO, "--max-retries", "0", "--poll-interval", "0.1", "--poll-timeout", "1", "--out", "o.json")
    assert r.code == 8, r.stderr
    assert "still queued" in r.error_lines[0] and "--poll-timeout" in r.error_lines[0]
    assert "poll 1 of video_" in r.stderr  # each failed poll is reported, and polling goes on
    record = r.record
    job_id = record["job"]["id"]
    assert job_id.startswith("video_") and record["job"]["status"] == "queued"
    assert f"/videos/{job_id}" in record["error"]["hint"]  # how to fetch it later
    assert len(emulator.paid_calls()) == 1
    assert len(emulator.calls("GET", "/v1/videos/*")) >= 3


def test_video_download_failure_keeps_the_paid_job_for_a_later_download(
    cli, emulator: PoeEmulator, tmp_path: Path
) -> None:
    emulator.redirect_content_to_alt_host = True
    emulator.script("GET", "/media/*", Reply(403, body="<Error>Request has expired</Error>"))
    r = cli(*VIDEO, "--poll-interval", "0", "--download", "--out", "v.json")
    assert r.code == 10
    assert "HTTP 403" in r.error_lines[0]
    record = r.record
    assert record["error"]["kind"] == "download" and record["job"]["status"] == "completed"
    [output] = record["outputs"]
    assert output["url"].endswith(f"/videos/{record['job']['id']}/content") and "path" not in output
    assert len(emulator.paid_calls()) == 1
    assert not (tmp_path / "v.mp4").exists() and no_part_files(tmp_path)


def test_download_cut_short_leaves_no_part_file(cli, emulator: PoeEmulator, tmp_path: Path) -> None:
    emulator.script("GET", "/media/*", Drop("mid_body", partial_body=b"\x89PNG\r\n\x1a\n" + bytes(1000)))
    r = cli(*IMAGE, "--download", "--out", "o.json")
    assert r.code == 10
    assert "download of" in r.error_lines[0]
    [output] = r.record["outputs"]
    assert output["url"].startswith(emulator.root_url + "/media/image/") and "path" not in output
    assert len(emulator.paid_calls()) == 1 and len(emulator.calls("GET", "/media/*")) == 1
    assert not (tmp_path / "o.png").exists() and no_part_files(tmp_path)


# --- rate limits -----------------------------------------------------------------------------------------


def test_429_storm_on_paid_media_exhausts_the_budget_without_falling_back(cli, emulator: PoeEmulator) -> None:
    storm = [error_reply(429, "rate_limit_error", "slow down", headers={"Retry-After": "0"})] * 20
    emulator.script("POST", "/v1/images", *storm)
    r = cli(*IMAGE, "--max-retries", "3", "--out", "o.json")
    assert r.code == 6
    assert "after 4 tries" in r.error_lines[0]
    record = r.record
    assert record["error"]["kind"] == "rate_limited" and record["error"]["status"] == 429
    assert [(a["status"], a["retry_after_s"]) for a in record["attempts"]] == [(429, 0)] * 4
    assert record["route"]["fell_back"] is False
    assert [c.path for c in emulator.paid_calls()] == ["/v1/images"] * 4  # 429s are not charged


# --- Ctrl-C ------------------------------------------------------------------------------------------------


def _start(tmp_path: Path, emulator: PoeEmulator, *args: str) -> subprocess.Popen[str]:
    return start_cli(list(args), cwd=tmp_path, base_url=emulator.base_url, key=EMULATOR_KEY)


def _interrupt_when(proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 30) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"never reached the point to interrupt (exit {proc.returncode}): {err}")
        time.sleep(0.02)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def _slow_png() -> Iterator[bytes]:
    yield b"\x89PNG\r\n\x1a\n" + bytes(64 * 1024 - 8)
    for _ in range(300):
        time.sleep(0.05)
        yield bytes(64 * 1024)


def _assert_cancelled(proc: subprocess.Popen[str], err: str, tmp_path: Path) -> dict[str, Any]:
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "cancelled" in err
    record: dict[str, Any] = json.loads((tmp_path / "o.json").read_text(encoding="utf-8"))
    validate_record(record)
    assert record["state"] == "cancelled" and record["ok"] is False
    assert record["error"]["kind"] == "cancelled" and record["error"]["exit_code"] == 130
    assert "may still be charged" in record["error"]["message"]
    assert no_part_files(tmp_path)
    return record


def test_ctrl_c_during_the_request(emulator: PoeEmulator, tmp_path: Path) -> None:
    emulator.script("POST", "/v1/images", Reply(200, json={"data": []}, delay=30))
    proc = _start(tmp_path, emulator, *IMAGE, "--out", "o.json")
    _, err = _interrupt_when(proc, lambda: bool(emulator.paid_calls()))
    record = _assert_cancelled(proc, err, tmp_path)
    assert record["request"]["body"]["prompt"] == "x" and record["response"] is None
    assert len(emulator.paid_calls()) == 1


def test_ctrl_c_during_video_polling_keeps_the_job_id(emulator: PoeEmulator, tmp_path: Path) -> None:
    emulator.video_outcome = "stuck"
    proc = _start(tmp_path, emulator, *VIDEO, "--poll-interval", "0.2", "--out", "o.json")
    _, err = _interrupt_when(proc, lambda: bool(emulator.calls("GET", "/v1/videos/*")))
    record = _assert_cancelled(proc, err, tmp_path)
    assert record["job"]["id"].startswith("video_") and record["job"]["status"] == "queued"
    assert len(emulator.paid_calls()) == 1


def test_ctrl_c_during_a_download_leaves_no_part_file_and_keeps_the_url(emulator: PoeEmulator, tmp_path: Path) -> None:
    emulator.script("GET", "/media/*", Reply(200, body=_slow_png(), content_type="image/png"))  # type: ignore[arg-type]
    proc = _start(tmp_path, emulator, *IMAGE, "--download", "--out", "o.json")
    _, err = _interrupt_when(proc, lambda: any(tmp_path.glob(".*.part")))
    record = _assert_cancelled(proc, err, tmp_path)
    [output] = record["outputs"]
    assert output["url"].startswith(emulator.root_url + "/media/image/") and "path" not in output
    assert not (tmp_path / "o.png").exists()
    assert len(emulator.paid_calls()) == 1
