"""Tests of the Poe emulator itself (tests/poe_emulator.py).

The official openai SDK is pointed at the emulator so that its wire format cannot drift from the
OpenAI-compatible shapes the product will meet on the real Poe API.
"""

from __future__ import annotations

import base64
import json
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import openai
import pytest
from conftest import EMULATOR_KEY
from openai.types import ImagesResponse, Video
from openai.types.chat import ChatCompletion
from openai.types.responses import Response as OpenAIResponse
from poe_emulator import Drop, PoeEmulator, Reply, error_reply

AUTH = {"Authorization": f"Bearer {EMULATOR_KEY}"}
PNG_SIG = b"\x89PNG\r\n\x1a\n"
# One shared client: httpx's top-level helpers build a fresh SSL context per call (~90 ms each).
HTTP = httpx.Client(timeout=10)


def sdk(emulator: PoeEmulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.base_url, api_key=EMULATOR_KEY, max_retries=0, timeout=10)


def post(emulator: PoeEmulator, path: str, body: dict, params: dict[str, str] | None = None) -> httpx.Response:
    return HTTP.post(emulator.root_url + path, json=body, headers=AUTH, params=params)


def chat_body(model: str = "gpt-5", text: str = "hello world", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


# --------------------------------------------------------------------------- SDK conformance


def test_sdk_chat_completion_plain(emulator: PoeEmulator) -> None:
    client = sdk(emulator)
    raw = client.chat.completions.with_raw_response.create(
        model="GPT-5",  # requests accept any case
        messages=[
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "hello world"},
        ],
    )
    assert re.fullmatch(r"req_[0-9a-f]+", raw.headers["x-request-id"])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Echo from gpt-5: hello world"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-5"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    ChatCompletion.model_validate(json.loads(raw.content))  # strict validation of the raw JSON


def test_sdk_chat_completion_content_parts(emulator: PoeEmulator) -> None:
    png = base64.b64encode(PNG_SIG).decode()
    completion = sdk(emulator).chat.completions.create(
        model="claude-sonnet-4.6",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                    {"type": "text", "text": "briefly"},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == "Echo from claude-sonnet-4.6: describe briefly [images: 1]"


def test_sdk_chat_completion_stream(emulator: PoeEmulator) -> None:
    stream = sdk(emulator).chat.completions.create(
        model="gpt-5",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish = None
    usage = None
    count = 0
    for chunk in stream:
        count += 1
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == "Echo from gpt-5: one two three four"
    assert count >= 7  # one chunk per word, plus role/finish/usage chunks
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


def test_chat_stream_arrives_progressively(emulator: PoeEmulator) -> None:
    emulator.latency = 0.6
    start = time.monotonic()
    arrivals: list[float] = []
    body = chat_body(text="a b c d e f g")
    with HTTP.stream("POST", emulator.base_url + "/chat/completions", json={**body, "stream": True}, headers=AUTH) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - start)
                lines.append(line)
    assert lines[-1] == "data: [DONE]"
    assert arrivals[-1] - arrivals[0] >= 0.35  # chunks spread over the latency, not sent in one burst


def test_sdk_responses_plain(emulator: PoeEmulator) -> None:
    client = sdk(emulator)
    raw = client.responses.with_raw_response.create(model="gpt-5", input="hi there", instructions="be brief")
    data = json.loads(raw.content)
    assert "output_text" not in data
    OpenAIResponse.model_validate(data)
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Echo from gpt-5: hi there"
    assert response.usage is not None and response.usage.total_tokens > 0

    items = client.responses.create(
        model="gpt-5",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "as items"}]}],
    )
    assert items.output_text == "Echo from gpt-5: as items"


def test_sdk_responses_stream(emulator: PoeEmulator) -> None:
    events = list(sdk(emulator).responses.create(model="gpt-5", input="stream me please", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert types.count("response.output_text.delta") >= 3
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Echo from gpt-5: stream me please"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == deltas


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sdk_video_lifecycle_completed(emulator: PoeEmulator) -> None:
    client = sdk(emulator)
    emulator.video_polls = 3
    video = client.videos.create(model="veo-3.1", prompt="a cat surfing", seconds="8", size="1280x720")
    assert video.status == "queued" and video.progress == 0
    assert video.id.startswith("video_") and video.seconds == "8" and video.size == "1280x720"
    first = client.videos.retrieve(video.id)
    second = client.videos.retrieve(video.id)
    assert (first.status, second.status) == ("in_progress", "in_progress")
    assert 0 < first.progress < second.progress < 100
    done = client.videos.retrieve(video.id)
    assert done.status == "completed" and done.progress == 100 and done.completed_at is not None
    content = client.videos.download_content(video.id)
    assert content.content[4:8] == b"ftyp"
    assert content.response.headers["content-type"] == "video/mp4"
    thumb = client.videos.download_content(video.id, variant="thumbnail")
    assert thumb.content[:4] == b"RIFF" and thumb.content[8:12] == b"WEBP"


def test_video_json_body_validates_with_openai_model(emulator: PoeEmulator) -> None:
    created = post(emulator, "/v1/videos", {"model": "Sora-2", "prompt": "waves", "seconds": 4})
    assert created.status_code == 200
    video = Video.model_validate(created.json())
    assert (video.status, video.seconds, video.size, video.model) == ("queued", "4", "720x1280", "sora-2")
    default_google = post(emulator, "/v1/videos", {"model": "veo-3.1", "prompt": "waves"}).json()
    assert default_google["seconds"] == "8"
    img = base64.b64encode(PNG_SIG).decode()
    with_image = post(emulator, "/v1/videos", {"model": "veo-3.1", "prompt": "x", "input_image": img})
    assert with_image.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "veo-3.1", "prompt": "x", "seconds": "8"}, 400, "seconds"),
        ({"model": "veo-3.1", "prompt": "x", "seconds": 8.5}, 400, "seconds"),
        ({"model": "veo-3.1", "prompt": "x", "size": "big"}, 400, "size"),
        ({"model": "veo-3.1", "prompt": "x", "input_image": "%%%not base64"}, 400, "input_image"),
        ({"model": "veo-3.1", "prompt": "x", "aspect_ratio": "4:3"}, 400, "aspect_ratio"),
        ({"model": "veo-3", "prompt": "x"}, 404, None),
        ({"model": "gpt-5", "prompt": "x"}, 404, None),
    ],
)
def test_video_create_rejections(emulator: PoeEmulator, body: dict, status: int, param: str | None) -> None:
    r = post(emulator, "/v1/videos", body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == param or param is None
    assert emulator.balance == 100_000  # failed requests cost nothing


def test_video_failed_stuck_and_not_ready(emulator: PoeEmulator) -> None:
    emulator.video_polls = 1

    def create() -> str:
        return str(post(emulator, "/v1/videos", {"model": "sora-2", "prompt": "p"}).json()["id"])

    def poll(vid: str) -> dict:
        return HTTP.get(f"{emulator.base_url}/videos/{vid}", headers=AUTH).json()

    emulator.video_outcome = "failed"
    failed = create()
    job = poll(failed)
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "moderation_blocked",
        "message": "The prompt was blocked by safety filters.",
    }
    Video.model_validate(job)
    content = HTTP.get(f"{emulator.base_url}/videos/{failed}/content", headers=AUTH)
    assert content.status_code == 404

    emulator.video_outcome = "stuck"
    stuck = create()
    assert [poll(stuck)["status"] for _ in range(5)] == ["queued"] * 5

    assert HTTP.get(f"{emulator.base_url}/videos/video_nope", headers=AUTH).status_code == 404
    assert HTTP.get(f"{emulator.base_url}/videos/{stuck}/content").status_code == 401


def test_video_content_redirects_to_alt_host(emulator: PoeEmulator) -> None:
    emulator.video_polls = 1
    emulator.redirect_content_to_alt_host = True
    vid = post(emulator, "/v1/videos", {"model": "veo-3.1", "prompt": "p"}).json()["id"]
    assert HTTP.get(f"{emulator.base_url}/videos/{vid}", headers=AUTH).json()["status"] == "completed"
    raw = HTTP.get(f"{emulator.base_url}/videos/{vid}/content", headers=AUTH)
    assert raw.status_code == 302
    assert raw.headers["location"] == f"{emulator.alt_root_url}/media/video/{vid}.mp4"
    followed = HTTP.get(f"{emulator.base_url}/videos/{vid}/content", headers=AUTH, follow_redirects=True)
    assert followed.status_code == 200 and followed.content[4:8] == b"ftyp"
    cdn = emulator.calls("GET", "/media/*")[-1]
    assert cdn.host == f"localhost:{emulator.port}"
    assert not cdn.has_auth_header  # httpx drops Authorization on a cross-host redirect


# --------------------------------------------------------------------------- images and audio


def test_images_url_shape_parses(emulator: PoeEmulator) -> None:
    r = post(emulator, "/v1/images", {"model": "nano-banana-2", "prompt": "a fox", "aspect_ratio": "16:9"})
    assert r.status_code == 200
    parsed = ImagesResponse.model_validate(r.json())
    assert parsed.data is not None and parsed.data[0].url is not None
    url = parsed.data[0].url
    assert url.startswith(emulator.root_url + "/media/image/")
    media = HTTP.get(url)  # CDN: no auth needed
    assert media.content.startswith(PNG_SIG)
    assert media.headers["content-type"] == "image/png"


def test_images_other_shapes(emulator: PoeEmulator) -> None:
    body = {"model": "gpt-image-1", "prompt": "a fox", "quality": "low"}
    emulator.image_shape = "b64_json"
    parsed = ImagesResponse.model_validate(post(emulator, "/v1/images", body).json())
    assert parsed.data is not None and parsed.data[0].b64_json is not None
    png = base64.b64decode(parsed.data[0].b64_json)
    assert png.startswith(PNG_SIG) and png.endswith(b"IEND\xaeB`\x82")

    emulator.image_shape = "top_url"
    assert set(post(emulator, "/v1/images", body).json()) == {"url"}

    emulator.image_shape = "binary"
    emulator.media_size = 1000
    binary = post(emulator, "/v1/images", body)
    assert binary.headers["content-type"] == "image/png"
    assert binary.content.startswith(PNG_SIG) and len(binary.content) == 1000


def test_direct_routes_404_without_endpoint(emulator: PoeEmulator) -> None:
    for path, model in [("/v1/images", "imagen-4"), ("/v1/images", "nano-banana-pro"), ("/v1/audio", "lyria-3")]:
        r = post(emulator, path, {"model": model, "prompt": "x"})
        assert r.status_code == 404, (path, model)
        assert r.json()["error"]["type"] == "not_found_error"
    assert emulator.balance == 100_000


def test_audio_shapes(emulator: PoeEmulator) -> None:
    body = {"model": "elevenlabs-v3", "prompt": "Hello.", "speaker_count": 1}
    url = post(emulator, "/v1/audio", body).json()["data"][0]["url"]
    assert url.endswith(".mp3")
    got = HTTP.get(url)
    assert got.headers["content-type"] == "audio/mpeg" and got.content.startswith(b"ID3")
    emulator.audio_shape = "binary"
    binary = post(emulator, "/v1/audio", body)
    assert binary.headers["content-type"] == "audio/mpeg" and binary.content.startswith(b"ID3")


# --------------------------------------------------------------------------- chat: validation and media bots


def test_auth(emulator: PoeEmulator) -> None:
    no_key = HTTP.post(emulator.base_url + "/chat/completions", json=chat_body())
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert no_key.headers["x-request-id"].startswith("req_")
    bad = HTTP.post(
        emulator.base_url + "/chat/completions",
        json=chat_body(),
        headers={"Authorization": "Bearer sk-wrong-secret-999"},
    )
    assert bad.status_code == 401 and "sk-wrong-secret-999" not in bad.text
    assert HTTP.get(emulator.root_url + "/usage/current_balance").status_code == 401
    catalogue = HTTP.get(emulator.base_url + "/models")  # no auth needed
    assert catalogue.status_code == 200
    ids = [m["id"] for m in catalogue.json()["data"]]
    assert "nano-banana-2" in ids and all(i == i.lower() for i in ids)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=emulator.base_url, api_key="nope", max_retries=0).chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "x"}]
        )
    recorded = emulator.calls("POST", "/v1/chat/completions")
    assert [(r.authorized, r.has_auth_header) for r in recorded] == [(False, False), (False, True), (False, True)]
    assert emulator.paid_calls() == recorded
    assert emulator.balance == 100_000


def test_catalogue_shape(emulator: PoeEmulator) -> None:
    data = {m["id"]: m for m in HTTP.get(emulator.base_url + "/models").json()["data"]}
    nano = data["nano-banana-2"]
    assert nano["architecture"]["output_modalities"] == ["image"]
    assert nano["architecture"]["modality"] == "text,image->image"
    assert {p["name"] for p in nano["parameters"]} == {"aspect_ratio", "image_size", "image_only", "web_search"}
    assert "parameters" not in data["legacy-bot"]
    veo = {p["name"]: p["schema"] for p in data["veo-3.1"]["parameters"]}
    assert veo["duration"]["enum"] == ["4", "6", "8"] and veo["seed"] == {"type": "string"}
    for model in data.values():
        assert model["object"] == "model"
        assert model["pricing"] is None or all(isinstance(v, str | None) for v in model["pricing"].values())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat_body("nano-banana-2", duration="8"), "duration"),
        (chat_body("claude-sonnet-4.6", thinking_budget=100), "thinking_budget"),
        (chat_body("gpt-5", extra_body={"reasoning_effort": "low"}), "extra_body"),
        (chat_body("gpt-5", n=2), "n"),
        (chat_body("nano-banana-2", aspect_ratio="7:7"), "aspect_ratio"),
        (chat_body("veo-3.1", duration=8), "duration"),
        ({"model": "gpt-5"}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_chat_400(emulator: PoeEmulator, body: dict, param: str) -> None:
    r = post(emulator, "/v1/chat/completions", body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert param in err["message"]
    assert set(err) == {"message", "type", "code", "param", "metadata"}


def test_chat_accepts_declared_and_standard_keys(emulator: PoeEmulator) -> None:
    ok = [
        chat_body("nano-banana-2", aspect_ratio="16:9", image_size="2K", image_only=True, seed=3),
        chat_body("veo-3.1", duration="8", seed="42", no="blur", silent=True),
        chat_body("gpt-5", reasoning_effort="high", temperature=0.3, max_tokens=50, user="u"),
        chat_body("legacy-bot", anything_goes=1, extra={"x": 1}),
    ]
    for body in ok:
        r = post(emulator, "/v1/chat/completions", body)
        assert r.status_code == 200, (body, r.text)


def test_unknown_model_404(emulator: PoeEmulator) -> None:
    r = post(emulator, "/v1/chat/completions", chat_body("No-Such-Bot"))
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"
    assert r.json()["error"]["message"] == "Model 'No-Such-Bot' not found"
    with pytest.raises(openai.NotFoundError):
        sdk(emulator).responses.create(model="no-such-bot", input="x")


def test_chat_media_shapes(emulator: PoeEmulator) -> None:
    def content(model: str) -> str:
        r = post(emulator, "/v1/chat/completions", chat_body(model, "make it"))
        assert r.status_code == 200
        return str(r.json()["choices"][0]["message"]["content"])

    image = content("nano-banana-2")
    m = re.fullmatch(r"!\[image\]\((\S+)\)", image)
    assert m and re.fullmatch(r".*/media/image/[0-9a-f]+\.png\?w=1024&h=1024", m.group(1))
    assert HTTP.get(m.group(1)).content.startswith(PNG_SIG)
    audio = content("elevenlabs-v3")
    assert re.fullmatch(re.escape(emulator.root_url) + r"/media/audio/[0-9a-f]+\.mp3", audio)
    video = content("veo-3.1")
    assert re.fullmatch(re.escape(emulator.root_url) + r"/media/video/[0-9a-f]+\.mp4", video)
    assert HTTP.get(video).content[4:8] == b"ftyp"

    emulator.chat_media_shape = "bare"
    assert content("gpt-image-1").startswith(emulator.root_url + "/media/image/")
    emulator.chat_media_shape = "both"
    urls = re.findall(r"https?://\S+?(?=\)|\s|$)", content("nano-banana-2"))
    assert len(urls) == 2 and urls[0] != urls[1]
    emulator.chat_media_shape = "text_only"
    assert content("nano-banana-2") == "I can't create that image."


# --------------------------------------------------------------------------- scripting and failures


def test_scripted_replies_fifo_then_default(emulator: PoeEmulator) -> None:
    emulator.script(
        "POST",
        "/v1/chat/completions",
        error_reply(500, "provider_error", "boom", code=500),
        Reply(status=200, json={"custom": True}, headers={"X-Extra": "1"}),
    )
    emulator.script("GET", "/media/*", Reply(status=503, body="busy", headers={"Retry-After": "2"}))
    first = post(emulator, "/v1/chat/completions", chat_body())
    assert first.status_code == 500
    assert first.json()["error"] == {
        "message": "boom",
        "type": "provider_error",
        "code": 500,
        "param": None,
        "metadata": {},
    }
    assert first.headers["x-request-id"].startswith("req_")
    second = post(emulator, "/v1/chat/completions", chat_body())
    assert second.json() == {"custom": True} and second.headers["x-extra"] == "1"
    third = post(emulator, "/v1/chat/completions", chat_body())
    assert third.json()["choices"][0]["message"]["content"] == "Echo from gpt-5: hello world"
    media = HTTP.get(emulator.root_url + "/media/image/abc.png")
    assert media.status_code == 503 and media.text == "busy" and media.headers["retry-after"] == "2"
    assert HTTP.get(emulator.root_url + "/media/image/abc.png").status_code == 200
    assert len(emulator.paid_calls()) == 3
    assert emulator.balance == 100_000 - 10  # only the default answer is charged


def test_scripted_delay(emulator: PoeEmulator) -> None:
    emulator.script("GET", "/v1/models", Reply(json={"object": "list", "data": []}, delay=0.3))
    start = time.monotonic()
    assert HTTP.get(emulator.base_url + "/models").json()["data"] == []
    assert time.monotonic() - start >= 0.3


def test_drop_before_headers(emulator: PoeEmulator, capfd: pytest.CaptureFixture[str]) -> None:
    emulator.script("POST", "/v1/chat/completions", Drop(), Drop())
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(emulator, "/v1/chat/completions", chat_body())
    with pytest.raises(openai.APIConnectionError):
        sdk(emulator).chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert post(emulator, "/v1/chat/completions", chat_body()).status_code == 200
    time.sleep(0.05)
    assert capfd.readouterr().err == ""  # the server thread stays quiet


def test_drop_mid_body(emulator: PoeEmulator, capfd: pytest.CaptureFixture[str]) -> None:
    emulator.script("POST", "/v1/chat/completions", Drop("mid_body"), Drop("mid_body", b"0123456789"))
    with pytest.raises(httpx.RemoteProtocolError):
        post(emulator, "/v1/chat/completions", chat_body())
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        HTTP.stream("POST", emulator.base_url + "/chat/completions", json=chat_body(), headers=AUTH) as r,
    ):
        assert r.status_code == 200
        assert int(r.headers["content-length"]) > 10
        for chunk in r.iter_raw():
            received += chunk
    assert received == b"0123456789"
    assert post(emulator, "/v1/chat/completions", chat_body()).status_code == 200
    time.sleep(0.05)
    assert capfd.readouterr().err == ""


def test_rate_limiter(emulator: PoeEmulator) -> None:
    emulator.rate_limit_rps = 4  # bucket of 4, refilled at 4/s
    for _ in range(4):
        assert post(emulator, "/v1/chat/completions", chat_body()).status_code == 200
    limited = post(emulator, "/v1/chat/completions", chat_body())
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert int(limited.headers["retry-after"]) >= 1
    assert int(limited.headers["retry-after-ms"]) > 0
    assert emulator.rate_limited == 1
    assert HTTP.get(emulator.base_url + "/models").status_code == 200  # not a paid call
    assert emulator.balance == 100_000 - 4 * 10  # rate-limited requests are not charged
    time.sleep(0.3)
    assert post(emulator, "/v1/chat/completions", chat_body()).status_code == 200


# --------------------------------------------------------------------------- media CDN


@pytest.mark.parametrize(
    ("path", "ctype", "check"),
    [
        ("/media/image/x.png", "image/png", lambda b: b.startswith(PNG_SIG)),
        ("/media/audio/x.mp3", "audio/mpeg", lambda b: b.startswith(b"ID3")),
        ("/media/video/x.mp4", "video/mp4", lambda b: b[4:8] == b"ftyp"),
        ("/media/image/x.webp", "image/webp", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
        ("/media/image/x.jpg", "image/jpeg", lambda b: b.startswith(b"\xff\xd8\xff")),
    ],
)
def test_media_magic(emulator: PoeEmulator, path: str, ctype: str, check: object) -> None:
    r = HTTP.get(emulator.root_url + path)
    assert r.status_code == 200
    assert r.headers["content-type"] == ctype
    assert int(r.headers["content-length"]) == len(r.content) == 4096
    assert callable(check) and check(r.content)


def test_media_errors(emulator: PoeEmulator) -> None:
    expired = HTTP.get(emulator.root_url + "/media/expired/abc.png")
    assert expired.status_code == 403 and "AccessDenied" in expired.text
    assert HTTP.get(emulator.root_url + "/media/missing/abc.png").status_code == 404
    head = HTTP.head(emulator.root_url + "/media/video/a.mp4")
    assert head.status_code == 200 and head.headers["content-length"] == "4096"


def test_big_media_streams(emulator: PoeEmulator) -> None:
    size = 50 * 1024 * 1024
    emulator.media_size = size
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    total = 0
    with HTTP.stream("GET", emulator.root_url + "/media/video/big.mp4") as r:
        assert int(r.headers["content-length"]) == size
        for i, chunk in enumerate(r.iter_raw(1 << 20)):
            if i == 0:
                assert chunk[4:8] == b"ftyp"
            total += len(chunk)
    assert total == size
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert growth_mib < 30, f"serving 50 MiB raised peak memory by {growth_mib:.0f} MiB"


# --------------------------------------------------------------------------- usage


def test_balance_and_history(emulator: PoeEmulator) -> None:
    def balance() -> int:
        return int(HTTP.get(emulator.root_url + "/usage/current_balance", headers=AUTH).json()["current_point_balance"])

    assert balance() == 100_000
    post(emulator, "/v1/chat/completions", chat_body())
    assert balance() == 99_990
    post(emulator, "/v1/images", {"model": "gpt-image-1", "prompt": "x"})
    post(emulator, "/v1/audio", {"model": "elevenlabs-v3", "prompt": "x"})
    post(emulator, "/v1/videos", {"model": "sora-2", "prompt": "x"})
    assert balance() == 100_000 - 10 - 300 - 200 - 3000 == emulator.balance
    history = HTTP.get(emulator.root_url + "/usage/points_history?limit=2", headers=AUTH).json()
    assert history["has_more"] is True
    assert [e["bot_name"] for e in history["data"]] == ["sora-2", "elevenlabs-v3"]
    entry = history["data"][0]
    assert set(entry) >= {
        "creation_time",
        "bot_name",
        "query_id",
        "cost_points",
        "cost_usd",
        "cost_breakdown_in_points",
        "usage_type",
    }
    assert entry["cost_points"] == 3000 and entry["creation_time"] > 1e15  # microseconds
    emulator.balance = 5
    poor = post(emulator, "/v1/chat/completions", chat_body())
    assert poor.status_code == 402 and poor.json()["error"]["type"] == "insufficient_credits"


def test_recorded_requests(emulator: PoeEmulator) -> None:
    post(emulator, "/v1/chat/completions", chat_body(), params={"trace": "1"})
    rec = emulator.calls("POST", "/v1/chat/completions")[0]
    assert rec.json == chat_body()
    assert json.loads(rec.body) == chat_body()
    assert rec.query == {"trace": "1"}
    assert rec.headers["authorization"] == f"Bearer {EMULATOR_KEY}"
    assert rec.authorized and rec.has_auth_header
    assert rec.host == f"127.0.0.1:{emulator.port}"
    assert emulator.calls("GET") == []
    assert emulator.calls(path="/v1/*") == [rec]


# --------------------------------------------------------------------------- standalone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_standalone_cli() -> None:
    port = _free_port()
    script = Path(__file__).with_name("poe_emulator.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port), "--key", "k-cli", "--video-polls", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == f"Poe emulator on http://127.0.0.1:{port}/v1 (key: k-cli)"
        r = HTTP.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=chat_body(),
            headers={"Authorization": "Bearer k-cli"},
        )
        assert r.json()["choices"][0]["message"]["content"] == "Echo from gpt-5: hello world"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    assert "Traceback" not in err
    assert "POST /v1" not in err  # no request log lines


def test_concurrent_slow_requests(emulator: PoeEmulator) -> None:
    emulator.latency = 0.4
    durations: list[float] = []

    def one() -> None:
        start = time.monotonic()
        assert post(emulator, "/v1/chat/completions", chat_body()).status_code == 200
        durations.append(time.monotonic() - start)

    start = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(durations) == 8 and min(durations) >= 0.4
    assert time.monotonic() - start < 2.0  # served in parallel (one by one would take 3.2 s)
    emulator.latency = 2.0
    start = time.monotonic()
    assert HTTP.get(emulator.base_url + "/models").status_code == 200  # latency only for paid calls
    assert time.monotonic() - start < 1.0


def test_busy_port_raises_oserror(emulator: PoeEmulator) -> None:
    with pytest.raises(OSError):
        PoeEmulator().start("127.0.0.1", emulator.port)


def test_context_manager_and_stop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with PoeEmulator("x", latency=0.0) as emu:
            url = emu.base_url
            assert HTTP.get(url + "/models").status_code == 200
    with pytest.raises(httpx.ConnectError):
        HTTP.get(url + "/models", timeout=2)
