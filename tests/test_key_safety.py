"""Issue 6, key safety: the key grants the owner's whole balance, so it must never leave the API's host and
never appear in stdout, stderr, records, summaries, downloaded files or error text.

One test sweeps every scenario through the real CLI with a long random key and searches everything left
behind for the key or any 8-character piece of it; the others check exception text in-process.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import poe_request_orchestrator as poe
import pytest
from cli_runner import CliResult, run_cli
from conftest import use_in_process
from hypothesis import given, settings
from hypothesis import strategies as st
from poe_emulator import PoeEmulator, Reply, chat_completion, error_reply

# Letters only: no piece of it is all digits (the redaction rule leaves those, as they match timestamps).
KEY = "poe-" + "".join(secrets.choice(string.ascii_letters) for _ in range(44))


def pieces(key: str) -> set[str]:
    """The key and every 8-character run of it that is not all digits."""
    return {key} | {key[i : i + 8] for i in range(len(key) - 7) if not key[i : i + 8].isdigit()}


def leaks(text: str, key: str = KEY) -> list[str]:
    return sorted(p for p in pieces(key) if p in text)


@pytest.fixture
def keyed() -> Iterator[PoeEmulator]:
    emu = PoeEmulator(KEY).start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        emu.stop()


def test_the_key_never_leaks_and_never_leaves_the_api_host(keyed: PoeEmulator, tmp_path: Path) -> None:
    emu = keyed
    api_host = f"127.0.0.1:{emu.port}"
    alt = emu.alt_root_url  # http://localhost:<port>: another host, as a CDN would be
    runs: list[tuple[str, CliResult]] = []

    def run(name: str, *args: str, code: int, stdin: str | None = None) -> CliResult:
        r = run_cli(list(args), cwd=tmp_path, base_url=emu.base_url, key=KEY, stdin=stdin)
        assert r.code == code, f"{name}: exit {r.code}\n{r.stderr}"
        runs.append((name, r))
        return r

    # Successes in every mode, with every output switch.
    run("llm", "--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--verbose", "--json", "--track-points",
        "--out", "llm.json", code=0)  # fmt: skip
    run("image", "--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--download", "--verbose",
        "--out", "image.json", code=0)  # fmt: skip
    emu.redirect_content_to_alt_host = True
    run("video", "--mode", "video", "--model", "veo-3.1", "--prompt", "x", "--poll-interval", "0", "--download",
        "--verbose", "--json", "--out", "video.json", code=0)  # fmt: skip
    answer = chat_completion(f"![a]({alt}/media/image/a.png) {alt}/v1/b")
    emu.script("POST", "/v1/chat/completions", Reply(200, json=answer))
    run(
        "cdn",
        "--mode",
        "image",
        "--model",
        "nano-banana-pro",
        "--prompt",
        "x",
        "--download",
        "--out",
        "cdn.json",
        code=10,
    )  # fmt: skip  (the second URL is not media: a 404, but still no key for another host)
    run("audio", "--mode", "audio", "--model", "lyria-3", "--prompt", "x", "--json", "--out", "audio.json", code=0)
    run("dry-run", "--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--dry-run", "--verbose", code=0)
    run("balance", "--balance", "--verbose", "--json", code=0)

    # Errors that echo the key back: in a message, in an HTML page, inside a stream.
    emu.script("POST", "/v1/chat/completions", error_reply(401, "authentication_error", f"Invalid API key {KEY}"))
    run("401", "--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--verbose", "--out", "e401.json", code=3)
    emu.script("POST", "/v1/chat/completions", error_reply(400, "invalid_request_error", f"bad header Bearer {KEY}"))
    run("400", "--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--json", "--out", "e400.json", code=5)
    html = f"<html><body><h1>502</h1><pre>Authorization: Bearer {KEY}</pre></body></html>"
    emu.script("POST", "/v1/images", Reply(500, body=html, content_type="text/html"))
    run("500", "--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--max-retries", "0", "--verbose",
        "--out", "e500.json", code=7)  # fmt: skip
    stream = f"data: {json.dumps({'error': {'message': f'key {KEY} revoked', 'type': 'provider_error'}})}\n\n"
    emu.script("POST", "/v1/chat/completions", Reply(200, body=stream, content_type="text/event-stream"))
    run("stream", "--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--stream", "--out", "stream.json", code=7)

    # A batch: a line whose error echoes the key, and one that succeeds; the summary goes to a file and stdout.
    emu.script("POST", "/v1/chat/completions", error_reply(400, "invalid_request_error", f"echo {KEY}"))
    rows = [
        {"id": "bad", "mode": "llm", "model": "gpt-5", "prompt": "a"},
        {"id": "good", "mode": "image", "model": "nano-banana-2", "prompt": "b"},
    ]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    run("batch", "--batch", "b.jsonl", "--json", "--verbose", "--concurrency", "1", code=11)

    # A record that names another API (a tampered or foreign record): its video URL needs the key, but the
    # key goes only to the API this run is configured for.
    foreign = {"base_url": f"{alt}/v1", "mode": "video", "outputs": [
        {"kind": "video", "url": f"{alt}/v1/videos/video_x/content", "source": "videos/{id}/content", "needs_key": True}
    ]}  # fmt: skip
    (tmp_path / "foreign.json").write_text(json.dumps(foreign), encoding="utf-8")
    run("download-from", "--download-from", "foreign.json", code=10)

    # Nothing printed, written or downloaded holds the key or any 8-character piece of it.
    for name, r in runs:
        assert not leaks(r.stdout), f"{name}: stdout leaks {leaks(r.stdout)}"
        assert not leaks(r.stderr), f"{name}: stderr leaks {leaks(r.stderr)}"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"llm.json", "image.png", "video.mp4", "batch-summary.json", "bad.json", "e500.json"} <= {
        p.name for p in files
    }
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        assert not leaks(text), f"{path.relative_to(tmp_path)} leaks {leaks(text)}"

    # The key went only to the API's host, only in the Authorization header, never to another host.
    requests = emu.requests
    elsewhere = [r for r in requests if r.host != api_host]
    assert {r.path for r in elsewhere} >= {"/v1/videos/video_x/content", "/media/image/a.png"}
    assert not [(r.host, r.path) for r in elsewhere if r.has_auth_header]
    assert all(r.authorized for r in requests if r.has_auth_header)
    assert not [r.path for r in requests if r.has_auth_header and not r.path.startswith(("/v1/", "/usage/"))]
    for r in requests:
        assert not leaks(r.path + json.dumps(r.query)), r.path
        assert not leaks(json.dumps({k: v for k, v in r.headers.items() if k != "authorization"}))
        assert not leaks(r.body.decode("utf-8", "replace")), r.path


# --- exception text, in-process -------------------------------------------------------------------------


@pytest.fixture
def in_process(keyed: PoeEmulator, tmp_path: Path, monkeypatch) -> PoeEmulator:
    use_in_process(monkeypatch, tmp_path, keyed, KEY)
    return keyed


@pytest.mark.parametrize("verbose", [False, True])
def test_an_internal_error_quoting_the_key_is_redacted_even_in_the_traceback(
    in_process: PoeEmulator, tmp_path: Path, capsys, monkeypatch, verbose: bool
) -> None:
    def broken(self: poe.Sender, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"header Authorization: Bearer {self.settings.api_key} rejected by the socket")

    monkeypatch.setattr(poe.Sender, "_try_once", broken)
    args = ["--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--out", "o.json"]
    code = poe.main([*args, "--verbose"] if verbose else args)
    out, err = capsys.readouterr()
    assert code == 1
    assert "internal error RuntimeError" in err and ("Traceback" in err) is verbose
    assert not leaks(out + err), leaks(out + err)
    record = (tmp_path / "o.json").read_text(encoding="utf-8")
    assert json.loads(record)["error"]["kind"] == "internal"
    assert not leaks(record)
    assert in_process.paid_calls() == []


@pytest.mark.parametrize(
    "bad_key",
    [
        pytest.param(KEY[:20] + "\n" + KEY[20:], id="newline"),
        pytest.param(KEY[:20] + " " + KEY[20:], id="space"),
        pytest.param(KEY[:20] + "\u201d" + KEY[20:], id="smart-quote"),
        pytest.param(KEY[:20] + "\x7f" + KEY[20:], id="control"),
    ],
)
def test_a_mangled_key_is_refused_before_sending_and_not_shown(
    in_process: PoeEmulator, tmp_path: Path, capsys, monkeypatch, bad_key: str
) -> None:
    monkeypatch.setenv("POE_API_KEY", bad_key)
    code = poe.main(["--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--verbose", "--out", "o.json"])
    out, err = capsys.readouterr()
    assert code == 3, err
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert "POE_API_KEY" in line and "Traceback" not in err
    assert not leaks(out + err, bad_key) and not leaks(out + err)
    assert in_process.paid_calls() == [] and not (tmp_path / "o.json").exists()


key_alphabet = string.ascii_letters + string.digits + "-_"


@settings(max_examples=300, deadline=None, database=None)
@given(
    key=st.text(key_alphabet, min_size=16, max_size=64),
    text=st.lists(st.text(max_size=20) | st.sampled_from(["<key>", "<piece>", "<cut>"]), max_size=12),
    start=st.integers(min_value=0, max_value=64),
)
def test_redact_removes_the_key_and_every_8_character_piece(key: str, text: list[str], start: int) -> None:
    i = start % (len(key) - 7)
    filled = "".join(
        key if t == "<key>" else key[i : i + 8] if t == "<piece>" else key[i:] if t == "<cut>" else t for t in text
    )
    assert not leaks(poe.redact(filled, key), key)


def test_redact_leaves_text_without_the_key_alone() -> None:
    text = "HTTP 400: bad request at 2026-11-27T04:18:00Z, request req_0123456789abcdef"
    assert poe.redact(text, KEY) == text
    assert poe.redact(text, "") == text
