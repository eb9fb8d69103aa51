"""End to end: the real CLI in a subprocess against the real local emulator (issue 2)."""

from __future__ import annotations

import json

import pytest
from cli_runner import WRAPPER
from conftest import EMULATOR_KEY
from poe_emulator import Drop, PoeEmulator, Reply, error_reply

ORCH = "scripts/poe_request_orchestrator.py"


# --- the four seed lines, verbatim ---------------------------------------------------------------------


def test_seed_image_line(cli, emulator: PoeEmulator) -> None:
    r = cli(
        "--mode", "image", "--model", "nano-banana-2",
        "--prompt", "Sleeping fox under aurora, cinematic lighting", "--out", "outputs/fox.json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    record = r.record
    assert record["ok"] is True and record["state"] == "succeeded"
    assert record["route"]["name"] == "direct" and record["route"]["endpoint"] == "/images"
    assert "supported_endpoints" in record["route"]["reason"]
    assert r.stdout.strip() == record["outputs"][0]["url"]
    assert record["outputs"][0]["url"].startswith(emulator.root_url + "/media/image/")
    [call] = emulator.paid_calls()
    assert call.path == "/v1/images" and call.json["prompt"] == "Sleeping fox under aurora, cinematic lighting"
    assert record["request"]["headers"]["Authorization"] == "Bearer ***"
    assert record["request_id"] and record["request_id"].startswith("req_")


def test_seed_video_line_maps_duration_and_resolution_on_the_direct_route(cli, emulator: PoeEmulator) -> None:
    r = cli(
        "--mode", "video", "--model", "veo-3.1", "--prompt", "A skier in the Alps",
        "--params", '{"duration":"6s","resolution":"1080p"}', "--out", "outputs/video.json", "--poll-interval", "0",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    [create] = emulator.paid_calls()
    assert create.path == "/v1/videos"
    assert create.json == {"model": "veo-3.1", "prompt": "A skier in the Alps", "seconds": 6, "size": "1920x1080"}
    polls = emulator.calls("GET", "/v1/videos/*")
    assert len(polls) == emulator.video_polls
    record = r.record
    assert record["job"]["status"] == "completed"
    assert record["outputs"][0]["url"].endswith("/content")
    assert r.stdout.strip() == record["outputs"][0]["url"]


def test_seed_video_line_on_the_chat_route_keeps_bot_parameters(cli, emulator: PoeEmulator) -> None:
    r = cli(
        "--mode", "video", "--model", "veo-3.1", "--prompt", "A skier in the Alps", "--route", "chat",
        "--params", '{"duration":"6s","resolution":"1080p"}', "--out", "outputs/video.json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    [call] = emulator.paid_calls()
    assert call.path == "/v1/chat/completions"
    assert call.json["stream"] is False
    assert call.json["duration"] == "6" and call.json["resolution"] == "1080p"
    assert "extra_body" not in call.json
    assert r.record["outputs"][0]["url"].startswith(emulator.root_url + "/media/video/")


def test_seed_audio_line_goes_through_chat(cli, emulator: PoeEmulator) -> None:
    r = cli(
        "--mode", "audio", "--model", "lyria-3", "--prompt", "Ambient synthwave loop", "--out", "outputs/audio.json"
    )
    assert r.code == 0, r.stderr
    [call] = emulator.paid_calls()
    assert call.path == "/v1/chat/completions" and call.json["stream"] is False
    assert r.record["route"]["name"] == "chat"
    assert r.stdout.strip().startswith(emulator.root_url + "/media/audio/")


def test_seed_llm_line_prints_only_the_answer(cli, emulator: PoeEmulator) -> None:
    r = cli(
        "--mode", "llm", "--model", "Claude-Sonnet-4.6", "--prompt", "Summarize the latest build status",
        "--out", "outputs/llm.json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.stdout == "Echo from claude-sonnet-4.6: Summarize the latest build status\n"
    record = r.record
    assert record["text"] == r.stdout.rstrip("\n")
    assert record["usage"]["total_tokens"] > 0
    assert record["response"]["body"]["object"] == "chat.completion"


def test_wrapper_line_works_verbatim_and_records_the_unsent_seed(cli, emulator: PoeEmulator) -> None:
    r = cli(
        "--prompt", "A cat in a hat", "--aspect-ratio", "4:3", "--seed", "42", "--out", "outputs/cat.json",
        script=WRAPPER,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    [call] = emulator.paid_calls()
    assert call.json["aspect_ratio"] == "4:3" and "seed" not in call.json
    assert r.record["labels"]["seed"] == 42
    assert "seed 42 is recorded" in r.stderr


# --- input handling ------------------------------------------------------------------------------------


def test_params_file_and_repeatable_param_merge(cli, emulator: PoeEmulator, tmp_path) -> None:
    (tmp_path / "p.json").write_text('{"aspect_ratio": "16:9", "image_only": false}')
    r = cli(
        "--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--params", "@p.json",
        "--param", "image_only=true", "--param", "image_size=2K", "--out", "o.json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    body = emulator.paid_calls()[0].json
    assert body["aspect_ratio"] == "16:9" and body["image_only"] is True and body["image_size"] == "2K"


def test_prompt_from_stdin(cli, emulator: PoeEmulator) -> None:
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "-", "--out", "o.json", stdin="line one\nline two\n")
    assert r.code == 0, r.stderr
    messages = emulator.paid_calls()[0].json["messages"]
    assert messages[-1] == {"role": "user", "content": "line one\nline two\n"}


def test_system_prompt_and_responses_api(cli, emulator: PoeEmulator) -> None:
    r = cli(
        "--mode", "llm", "--model", "gpt-5", "--api", "responses", "--system", "Be brief", "--prompt", "Hi",
        "--param", "max_tokens=50", "--out", "o.json",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    [call] = emulator.paid_calls()
    assert call.path == "/v1/responses"
    assert call.json["instructions"] == "Be brief" and call.json["input"] == "Hi"
    assert call.json["max_output_tokens"] == 50
    assert r.stdout == "Echo from gpt-5: Hi\n"
    assert r.record["route"]["name"] == "responses"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--params", "{not json"], "--params is not valid JSON"),
        (["--params", "[1, 2]"], "must be a JSON object"),
        (["--params", "@missing.json"], "cannot read the file"),
        (["--param", "novalue"], "is not key=value"),
        (["--mode", "painting"], "--mode 'painting' is not valid"),
        (["--route", "sideways"], "--route 'sideways' is not valid"),
        (["--image", "nope.png"], "no such file"),
        (["--param", "bogus=1"], "does not declare a parameter 'bogus'"),
        (["--param", "aspect_ratio=7:3"], "is not allowed"),
        (["--timeout", "abc"], "--timeout"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_is_sent(cli, emulator: PoeEmulator, args, needle) -> None:
    base = ["--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--out", "o.json"]
    if args[0] == "--mode":
        base = base[2:]
    r = cli(*base, *args)
    assert r.code == 2, r.stderr
    assert len(r.error_lines) == 1 and needle in r.error_lines[0], r.stderr
    assert emulator.paid_calls() == []
    assert r.stdout == ""


def test_undeclared_parameter_lists_the_allowed_names_and_no_validate_sends_it(cli, emulator: PoeEmulator) -> None:
    args = ["--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--param", "style=noir", "--out", "o.json"]
    r = cli(*args)
    assert r.code == 2 and "aspect_ratio, image_only, image_size, web_search" in r.stderr
    r = cli(*args, "--no-validate", "--route", "chat")
    assert r.code == 5  # the emulator, like Poe's chat route, refuses the undeclared key with 400
    assert len(emulator.paid_calls()) == 1
    assert r.record["error"]["status"] == 400


def test_missing_key_is_an_auth_error_and_nothing_is_sent(cli, emulator: PoeEmulator) -> None:
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", key=None)
    assert r.code == 3
    assert "POE_API_KEY" in r.error_lines[0] and "https://poe.com/api/keys" in r.error_lines[0]
    assert emulator.paid_calls() == []


def test_out_path_that_is_a_folder_is_refused(cli, emulator: PoeEmulator, tmp_path) -> None:
    (tmp_path / "adir").mkdir()
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--out", "adir")
    assert r.code == 2 and "is a folder" in r.stderr
    assert emulator.paid_calls() == []


def test_default_out_is_a_unique_file_under_outputs(cli, emulator: PoeEmulator, tmp_path) -> None:
    assert cli("--mode", "llm", "--model", "gpt-5", "--prompt", "a").code == 0
    assert cli("--mode", "llm", "--model", "gpt-5", "--prompt", "b").code == 0
    records = sorted((tmp_path / "outputs").glob("llm-*.json"))
    assert len(records) == 2
    assert {json.loads(p.read_text())["prompt"] for p in records} == {"a", "b"}


def test_mode_is_inferred_from_the_catalogue(cli, emulator: PoeEmulator) -> None:
    r = cli("--model", "lyria-3", "--prompt", "a loop", "--out", "o.json")
    assert r.code == 0, r.stderr
    assert r.record["mode"] == "audio"


def test_dry_run_prints_the_request_redacted_and_sends_nothing(cli, emulator: PoeEmulator) -> None:
    r = cli("--mode", "video", "--model", "veo-3.1", "--prompt", "p", "--param", "duration=8", "--dry-run")
    assert r.code == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["method"] == "POST" and shown["url"] == emulator.base_url + "/videos"
    assert shown["headers"]["Authorization"] == "Bearer ***"
    assert shown["body"]["seconds"] == 8
    assert EMULATOR_KEY not in r.stdout + r.stderr
    assert emulator.paid_calls() == []


def test_json_flag_prints_the_record(cli, emulator: PoeEmulator) -> None:
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--json", "--out", "o.json")
    assert r.code == 0
    assert json.loads(r.stdout) == r.record


# --- routing -------------------------------------------------------------------------------------------


def test_direct_404_falls_back_to_chat_once(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/images", error_reply(404, "not_found_error", "no such route"))
    r = cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--out", "o.json")
    assert r.code == 0, r.stderr
    assert [c.path for c in emulator.paid_calls()] == ["/v1/images", "/v1/chat/completions"]
    route = r.record["route"]
    assert route["name"] == "chat" and route["fell_back"] is True
    assert "falling back to the chat route" in r.stderr


def test_unreadable_catalogue_takes_the_direct_route(cli, emulator: PoeEmulator) -> None:
    emulator.script("GET", "/v1/models", Reply(500, body="<html>down</html>", content_type="text/html"))
    r = cli("--mode", "audio", "--model", "lyria-3", "--prompt", "x", "--out", "o.json")
    # lyria-3 has no direct /audio route: the direct try 404s (free), then chat succeeds
    assert r.code == 0, r.stderr
    assert "catalogue unavailable" in r.record["route"]["reason"] or r.record["route"]["fell_back"]
    assert [c.path for c in emulator.paid_calls()] == ["/v1/audio", "/v1/chat/completions"]


def test_catalogue_is_cached_on_disk(cli, emulator: PoeEmulator) -> None:
    for _ in range(2):
        assert cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--out", "o.json").code == 0
    assert len(emulator.calls("GET", "/v1/models")) == 1
    assert cli("--list-models", "--refresh-models").code == 0
    assert len(emulator.calls("GET", "/v1/models")) == 2


@pytest.mark.parametrize(
    ("shape", "source"),
    [("url", "data[].url"), ("b64_json", "data[].b64_json"), ("top_url", "url"), ("binary", "binary body")],
)
def test_every_image_answer_shape_yields_an_output(cli, emulator: PoeEmulator, tmp_path, shape, source) -> None:
    emulator.image_shape = shape
    r = cli("--mode", "image", "--model", "gpt-image-1", "--prompt", "x", "--out", "img/o.json")
    assert r.code == 0, r.stderr
    [output] = r.record["outputs"]
    assert output["source"] == source
    if "path" in output:  # inline bytes are saved beside the record
        assert (tmp_path / output["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert output["path"] == "img/o.png" and len(output["sha256"]) == 64
    assert r.stdout.strip() == output.get("path", output.get("url"))


def test_chat_answer_with_markdown_and_bare_urls_gives_every_output(cli, emulator: PoeEmulator) -> None:
    emulator.chat_media_shape = "both"
    r = cli("--mode", "image", "--model", "nano-banana-pro", "--prompt", "x", "--out", "o.json")
    assert r.code == 0, r.stderr
    assert len(r.record["outputs"]) == 2
    assert len(r.stdout.splitlines()) == 2


# --- failure classes through the CLI ---------------------------------------------------------------------


def test_text_only_media_answer_is_no_media_exit_9(cli, emulator: PoeEmulator) -> None:
    emulator.chat_media_shape = "text_only"
    r = cli("--mode", "image", "--model", "nano-banana-pro", "--prompt", "x", "--out", "o.json")
    assert r.code == 9
    assert "answered without media" in r.error_lines[0] and "I can't create that image" in r.error_lines[0]
    assert r.record["error"]["kind"] == "no_media" and r.record["text"]


def test_rejected_key_is_exit_3(cli, emulator: PoeEmulator) -> None:
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--out", "o.json", key="wrong-key-123456789")
    assert r.code == 3
    assert "POE_API_KEY" in r.error_lines[0]
    assert r.record["error"]["kind"] == "authentication" and r.record["error"]["status"] == 401
    assert len(emulator.paid_calls()) == 1


def test_out_of_points_is_exit_4_and_not_retried(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/chat/completions", error_reply(402, "insufficient_credits", "No points left"))
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--out", "o.json")
    assert r.code == 4
    assert "points ran out" in r.error_lines[0]
    assert len(emulator.paid_calls()) == 1


def test_unknown_model_is_exit_5_with_suggestions(cli, emulator: PoeEmulator) -> None:
    r = cli("--mode", "llm", "--model", "claude-sonet-4.6", "--prompt", "hi", "--out", "o.json")
    assert r.code == 5
    assert "did you mean claude-sonnet-4.6" in r.stderr
    assert r.record["error"]["kind"] == "not_found"


@pytest.mark.parametrize("status", [400, 403, 413])
def test_client_errors_are_never_retried(cli, emulator: PoeEmulator, status) -> None:
    emulator.script("POST", "/v1/chat/completions", error_reply(status, "invalid_request_error", "nope"))
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--out", "o.json")
    assert r.code == 5
    assert len(emulator.paid_calls()) == 1


def test_429_with_retry_after_is_waited_out_and_shown(cli, emulator: PoeEmulator) -> None:
    emulator.script(
        "POST", "/v1/images", error_reply(429, "rate_limit_error", "slow down", headers={"Retry-After": "1"})
    )
    r = cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--out", "o.json")
    assert r.code == 0, r.stderr
    attempts = r.record["attempts"]
    assert [a["status"] for a in attempts] == [429, 200]
    assert attempts[0]["retry_after_s"] == 1 and attempts[0]["wait_s"] == 1
    assert "retry 1 of 4 in 1.0 s" in r.stderr


def test_retry_after_ms_is_honoured(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/chat/completions", Reply(503, json={}, headers={"retry-after-ms": "150"}))
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--out", "o.json")
    assert r.code == 0
    assert r.record["attempts"][0]["wait_s"] == 0.15


def test_429_storm_exhausts_retries_exit_6(cli, emulator: PoeEmulator) -> None:
    storm = [error_reply(429, "rate_limit_error", "slow down", headers={"Retry-After": "0"})] * 10
    emulator.script("POST", "/v1/chat/completions", *storm)
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--max-retries", "2", "--out", "o.json")
    assert r.code == 6
    assert len(emulator.paid_calls()) == 3
    assert "after 3 tries" in r.error_lines[0]


def test_retry_after_beyond_the_cap_fails_at_once(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/images", error_reply(429, "rate_limit_error", "x", headers={"Retry-After": "3600"}))
    r = cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--out", "o.json")
    assert r.code == 6
    assert "longer than --max-retry-wait" in r.error_lines[0]
    assert len(emulator.paid_calls()) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
def test_server_errors_are_retried_then_exit_7(cli, emulator: PoeEmulator, status) -> None:
    emulator.script("POST", "/v1/chat/completions", *[Reply(status, body="<html><b>Bad gateway</b></html>")] * 3)
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--max-retries", "2", "--out", "o.json")
    assert r.code == 7
    assert len(emulator.paid_calls()) == 3
    assert "Bad gateway" in r.error_lines[0] and "<html>" not in r.error_lines[0]
    assert r.record["response"]["body"] == "<html><b>Bad gateway</b></html>"


def test_connection_refused_is_exit_8(cli, tmp_path) -> None:
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--max-retries", "1", "--out", "o.json",
            base_url="http://127.0.0.1:9/v1")  # fmt: skip
    assert r.code == 8
    assert "could not connect" in r.error_lines[0]
    assert [a["error"] for a in r.record["attempts"]] == ["ConnectError: not sent"] * 2


def test_connection_lost_after_sending_paid_media_is_not_retried(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/images", Drop("before_headers"))
    r = cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--out", "o.json")
    assert r.code == 8
    assert "may already have charged" in r.error_lines[0]
    assert len(emulator.paid_calls()) == 1


def test_connection_lost_after_sending_is_retried_with_opt_in(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/images", Drop("before_headers"))
    r = cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--retry-uncertain", "--out", "o.json")
    assert r.code == 0, r.stderr
    assert len(emulator.paid_calls()) == 2


def test_connection_lost_for_llm_is_retried(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/chat/completions", Drop("before_headers"))
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--out", "o.json")
    assert r.code == 0, r.stderr
    assert len(emulator.paid_calls()) == 2


def test_slow_answer_past_timeout_is_exit_8(cli, emulator: PoeEmulator) -> None:
    emulator.script("POST", "/v1/images", Reply(200, json={"data": []}, delay=3))
    r = cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--timeout", "0.5", "--out", "o.json")
    assert r.code == 8
    assert len(emulator.paid_calls()) == 1  # a read timeout on paid media is never re-sent


def test_video_job_that_fails_on_moderation_is_exit_5(cli, emulator: PoeEmulator) -> None:
    emulator.video_outcome = "failed"
    r = cli("--mode", "video", "--model", "veo-3.1", "--prompt", "x", "--poll-interval", "0", "--out", "o.json")
    assert r.code == 5
    assert "blocked by safety filters" in r.error_lines[0]
    assert len(emulator.paid_calls()) == 1


def test_video_job_past_its_deadline_is_exit_8(cli, emulator: PoeEmulator) -> None:
    emulator.video_outcome = "stuck"
    r = cli("--mode", "video", "--model", "veo-3.1", "--prompt", "x", "--poll-interval", "0.1",
            "--poll-timeout", "0.5", "--out", "o.json")  # fmt: skip
    assert r.code == 8
    assert "still queued" in r.error_lines[0]
    assert r.record["job"]["id"].startswith("video_")
    assert len(emulator.paid_calls()) == 1


def test_video_polls_survive_transient_errors_and_never_recreate_the_job(cli, emulator: PoeEmulator) -> None:
    emulator.script("GET", "/v1/videos/*", Reply(503, json={}), Drop("before_headers"), Reply(502, body="bad"))
    r = cli("--mode", "video", "--model", "veo-3.1", "--prompt", "x", "--poll-interval", "0", "--out", "o.json")
    assert r.code == 0, r.stderr
    assert len(emulator.paid_calls()) == 1
    assert r.record["job"]["status"] == "completed"


def test_malformed_json_for_llm_is_exit_7(cli, emulator: PoeEmulator) -> None:
    emulator.script(
        "POST", "/v1/chat/completions", Reply(200, body='{"id": "chatcmpl-1", "choi', content_type="application/json")
    )
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--out", "o.json")
    assert r.code == 7
    assert "not JSON" in r.error_lines[0]
    assert r.record["response"]["body"] == '{"id": "chatcmpl-1", "choi'


def test_error_object_inside_a_200_is_classified(cli, emulator: PoeEmulator) -> None:
    emulator.script(
        "POST",
        "/v1/chat/completions",
        Reply(200, json={"error": {"message": "no credit", "type": "insufficient_credits"}}),
    )
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--out", "o.json")
    assert r.code == 4


def test_the_key_never_appears_anywhere(cli, emulator: PoeEmulator, tmp_path) -> None:
    emulator.script(
        "POST", "/v1/chat/completions", error_reply(400, "invalid_request_error", f"bad key {EMULATOR_KEY}")
    )
    runs = [
        cli("--mode", "llm", "--model", "gpt-5", "--prompt", "hi", "--out", "a.json", "--verbose"),
        cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--out", "b.json", "--json", "--verbose"),
        cli("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--dry-run", "--verbose"),
    ]
    assert runs[0].code == 5
    files = "".join(p.read_text() for p in tmp_path.rglob("*.json"))
    for r in runs:
        assert EMULATOR_KEY not in r.stdout + r.stderr
    assert EMULATOR_KEY not in files and EMULATOR_KEY[:8] not in files


@pytest.mark.parametrize("script", [None, WRAPPER])
def test_help_of_both_scripts_shows_examples(cli, script) -> None:
    r = cli("--help") if script is None else cli("--help", script=script)
    assert r.code == 0
    assert "Examples:" in r.stdout and "uv run scripts/" in r.stdout


@pytest.mark.parametrize("name", ["model", "messages", "stream"])
def test_a_parameter_may_not_replace_what_the_tool_sets(cli, emulator: PoeEmulator, name) -> None:
    r = cli("--mode", "llm", "--model", "legacy-bot", "--prompt", "hi", "--param", f"{name}=x", "--no-validate")
    assert r.code == 2 and f"parameter '{name}' would replace" in r.error_lines[0]
    assert emulator.paid_calls() == []
