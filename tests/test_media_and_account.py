"""Issue 4 end to end: downloads, image input, LLM streaming, catalogue and balance, through the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from poe_emulator import PoeEmulator, Reply, chat_completion

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


# --- downloads -------------------------------------------------------------------------------------------


def test_download_saves_beside_the_record_with_hash_and_type(cli, emulator: PoeEmulator, tmp_path: Path) -> None:
    r = cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--download", "--out", "out/fox.json")
    assert r.code == 0, r.stderr
    [output] = r.record["outputs"]
    saved = tmp_path / "out" / "fox.png"
    assert output["path"] == "out/fox.png" and saved.exists()
    data = saved.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) == emulator.media_size == output["bytes"]
    assert output["sha256"] == hashlib.sha256(data).hexdigest()
    assert output["content_type"] == "image/png"
    assert r.stdout.strip() == "out/fox.png"
    assert not list(tmp_path.rglob("*.part"))
    media_gets = emulator.calls("GET", "/media/*")
    assert media_gets and not any(c.has_auth_header for c in media_gets)  # a CDN never sees the key


def test_several_outputs_are_numbered(cli, emulator: PoeEmulator, tmp_path: Path) -> None:
    emulator.chat_media_shape = "both"
    r = cli("--mode", "image", "--model", "nano-banana-pro", "--prompt", "x", "--download", "--out", "o/pic.json")
    assert r.code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "o").glob("pic-*")) == ["pic-1.png", "pic-2.png"]


def test_video_content_is_fetched_with_the_key_but_a_redirect_elsewhere_drops_it(
    cli, emulator: PoeEmulator, tmp_path: Path
) -> None:
    emulator.redirect_content_to_alt_host = True
    r = cli(
        "--mode", "video", "--model", "veo-3.1", "--prompt", "x", "--poll-interval", "0", "--download",
        "--out", "v.json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    content = emulator.calls("GET", "/v1/videos/*")
    assert any(c.path.endswith("/content") and c.authorized for c in content)
    alt = [c for c in emulator.requests if c.host.startswith("localhost")]
    assert alt and not any(c.has_auth_header for c in alt)
    assert (tmp_path / "v.mp4").read_bytes()[4:8] == b"ftyp"


def test_download_from_an_existing_record_is_a_separate_step(cli, emulator: PoeEmulator, tmp_path: Path) -> None:
    assert cli("--mode", "audio", "--model", "lyria-3", "--prompt", "x", "--out", "a.json").code == 0
    assert not (tmp_path / "a.mp3").exists()
    r = cli("--download-from", "a.json")
    assert r.code == 0, r.stderr
    assert r.stdout.strip() == "a.mp3"
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["outputs"][0]["path"] == "a.mp3" and record["outputs"][0]["content_type"] == "audio/mpeg"
    assert not list(tmp_path.glob("a.2*.json"))  # rewriting its own record keeps no copy


def test_expired_url_is_a_download_error_exit_10(cli, emulator: PoeEmulator, tmp_path: Path) -> None:
    emulator.script(
        "POST",
        "/v1/chat/completions",
        Reply(200, json=chat_completion(f"![image]({emulator.root_url}/media/expired/abc.png)")),
    )
    r = cli("--mode", "image", "--model", "nano-banana-pro", "--prompt", "x", "--download", "--out", "e.json")
    assert r.code == 10
    assert "expired or is missing" in r.error_lines[0]
    record = r.record
    assert record["error"]["kind"] == "download" and record["outputs"][0]["url"].endswith("abc.png")
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / "e.png").exists()


# --- image input -----------------------------------------------------------------------------------------


def test_local_image_goes_inline_as_a_chat_content_part(cli, emulator: PoeEmulator, tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(PNG)
    r = cli(
        "--mode", "image", "--model", "nano-banana-2", "--prompt", "make it blue", "--image", "in.png",
        "--image", "https://example.org/ref.jpg", "--out", "o.json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    [call] = emulator.paid_calls()
    assert call.path == "/v1/chat/completions"
    parts = call.json["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "make it blue"}
    assert parts[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert parts[2]["image_url"]["url"] == "https://example.org/ref.jpg"
    record = r.record
    assert record["route"]["reason"] == "image input travels as chat content parts"
    assert record["inputs"][0]["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert "base64 of 72 bytes" in json.dumps(record["request"]["body"])  # summarised, not copied


def test_first_image_becomes_input_image_on_the_direct_video_route(cli, emulator: PoeEmulator, tmp_path) -> None:
    (tmp_path / "start.png").write_bytes(PNG)
    r = cli(
        "--mode", "video", "--model", "veo-3.1", "--prompt", "animate", "--image", "start.png", "--poll-interval",
        "0", "--out", "o.json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert emulator.paid_calls()[0].json["input_image"] == base64.b64encode(PNG).decode()


def test_image_that_is_not_an_image_is_refused_before_sending(cli, emulator: PoeEmulator, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    r = cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--image", "notes.txt")
    assert r.code == 2 and "not a PNG, JPEG, GIF or WebP image" in r.error_lines[0]
    assert emulator.paid_calls() == []


# --- streaming ---------------------------------------------------------------------------------------------


def test_stream_chat_prints_as_it_arrives_and_records_the_assembled_text(cli, emulator: PoeEmulator) -> None:
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "one two three four", "--stream", "--out", "s.json")
    assert r.code == 0, r.stderr
    assert r.stdout == "Echo from gpt-5: one two three four\n"
    body = r.record["response"]["body"]
    assert body["stream"] is True and body["event_count"] > 3 and body["text"] == r.stdout.strip()
    assert r.record["usage"]["total_tokens"] > 0
    assert emulator.paid_calls()[0].json["stream"] is True


def test_stream_responses_api(cli, emulator: PoeEmulator) -> None:
    r = cli(
        "--mode", "llm", "--model", "gpt-5", "--api", "responses", "--prompt", "a b c", "--stream", "--out", "s.json"
    )
    assert r.code == 0, r.stderr
    assert r.stdout == "Echo from gpt-5: a b c\n"
    assert r.record["usage"]["output_tokens"] > 0


def test_stream_is_refused_for_media(cli, emulator: PoeEmulator) -> None:
    r = cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--stream")
    assert r.code == 2 and "stream=false" in r.error_lines[0]
    assert emulator.paid_calls() == []


# --- catalogue and account ---------------------------------------------------------------------------------


def test_list_models_as_table_and_json(cli, emulator: PoeEmulator) -> None:
    r = cli("--list-models", "--mode", "video", "--json")
    assert r.code == 0, r.stderr
    listing = {m["id"]: m for m in json.loads(r.stdout)}
    assert set(listing) == {"veo-3.1", "sora-2", "veo-3"}
    assert listing["veo-3.1"]["routes"] == ["direct /videos", "chat"]
    assert "duration" in listing["veo-3.1"]["parameters"]
    table = cli("--list-models", "--mode", "audio")
    assert table.code == 0 and "elevenlabs-v3" in table.stdout and "lyria-3" in table.stdout
    assert emulator.paid_calls() == [] and not any(c.has_auth_header for c in emulator.calls("GET", "/v1/models"))


def test_describe_model_shows_allowed_values(cli, emulator: PoeEmulator) -> None:
    r = cli("--describe-model", "VEO-3.1")
    assert r.code == 0, r.stderr
    assert "720p, 1080p" in r.stdout and "duration" in r.stdout
    missing = cli("--describe-model", "veo-3.2")
    assert missing.code == 5 and "did you mean" in missing.error_lines[0]


def test_balance_and_points_spent_by_a_request(cli, emulator: PoeEmulator) -> None:
    r = cli("--balance")
    assert r.code == 0 and float(r.stdout) == emulator.balance
    r = cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--track-points", "--out", "p.json")
    assert r.code == 0, r.stderr
    points = r.record["points"]
    assert points["spent"] == points["before"] - points["after"] > 0
    assert cli("--balance", key=None).code == 3


def test_ctrl_c_during_a_stream_keeps_what_arrived(emulator: PoeEmulator, tmp_path: Path) -> None:
    import signal
    import time

    from cli_runner import start_cli, validate_record
    from conftest import EMULATOR_KEY

    emulator.latency = 8.0  # spread over the chunks: about half a second between words
    words = " ".join(f"w{i}" for i in range(12))
    args = ["--mode", "llm", "--model", "gpt-5", "--prompt", words, "--stream", "--out", "s.json"]
    proc = start_cli(args, cwd=tmp_path, base_url=emulator.base_url, key=EMULATOR_KEY, text=False)
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 30
    while b"w1" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.read1(100)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    record = json.loads((tmp_path / "s.json").read_text())
    validate_record(record)
    assert record["state"] == "cancelled" and record["error"]["kind"] == "cancelled"
    arrived = record["response"]["body"]["text"]
    assert arrived.startswith("Echo from gpt-5: w0 w1") and len(arrived) < len("Echo from gpt-5: " + words)
    assert record["text"] == arrived
    assert b"Traceback" not in err
    assert (seen + rest).decode() == arrived + "\n"  # what was printed is what was kept
