"""Fine-grained logic, in process: retry policy over httpx.MockTransport, parsing, mapping, extraction."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate
from pathlib import Path

import httpx
import poe_request_orchestrator as poe
import pytest

KEY = "sk-unit-test-key-abcdefghijklmnop"


# --- the retry policy, over a mock transport ----------------------------------------------------------------


def make_sender(handler, *, max_retries: int = 4, retry_uncertain: bool = False, max_retry_wait: float = 120):
    settings = poe.Settings(
        base_url="https://api.test/v1",
        api_key=KEY,
        max_retries=max_retries,
        retry_uncertain=retry_uncertain,
        max_retry_wait=max_retry_wait,
    )
    client = httpx.Client(transport=httpx.MockTransport(handler))
    record = poe.Record.detached()
    sleeps: list[float] = []
    sender = poe.Sender(client, settings, poe.Ui(quiet=True), poe.RateGate(), record, sleep=sleeps.append)
    return sender, record, sleeps


def scripted(*responses):
    """A handler answering with the given responses (or raising the given exceptions) in order."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = responses[min(len(seen), len(responses)) - 1]
        if isinstance(item, Exception):
            raise item
        return item

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


REQ = poe.PreparedRequest("POST", "https://api.test/v1/images", {"model": "m", "prompt": "p"})


def test_retry_after_seconds_is_the_wait_and_the_key_is_sent() -> None:
    handler = scripted(httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200, json={"data": []}))
    sender, record, sleeps = make_sender(handler)
    assert sender.send(REQ, paid=True, llm=False).status_code == 200
    assert sleeps == [3.0]
    assert [a["status"] for a in record.attempts] == [429, 200]
    assert handler.seen[0].headers["Authorization"] == f"Bearer {KEY}"


def test_backoff_without_retry_after_is_capped_exponential_with_jitter() -> None:
    handler = scripted(*[httpx.Response(502)] * 6, httpx.Response(200, json={}))
    sender, _record, sleeps = make_sender(handler, max_retries=6)
    sender.send(REQ, paid=True, llm=False)
    nominal = [0.5, 1, 2, 4, 8, 8]
    assert len(sleeps) == 6
    for got, want in zip(sleeps, nominal, strict=True):
        assert want * 0.75 <= got <= want


def test_exhausted_retries_raise_the_classified_error() -> None:
    sender, record, _sleeps = make_sender(scripted(httpx.Response(529, json={"error": {"type": "overloaded_error"}})),
                                         max_retries=2)  # fmt: skip
    with pytest.raises(poe.ServerError) as info:
        sender.send(REQ, paid=True, llm=False)
    assert "after 3 tries" in info.value.message and len(record.attempts) == 3


@pytest.mark.parametrize("status", [400, 401, 402, 403, 413])
def test_never_retried_statuses(status: int) -> None:
    sender, record, sleeps = make_sender(scripted(httpx.Response(status, json={"error": {"message": "no"}})))
    with pytest.raises(poe.ApiError):
        sender.send(REQ, paid=True, llm=False)
    assert len(record.attempts) == 1 and sleeps == []


def test_connect_error_is_retried_even_for_paid_media() -> None:
    handler = scripted(httpx.ConnectError("refused"), httpx.Response(200, json={}))
    sender, record, _ = make_sender(handler)
    assert sender.send(REQ, paid=True, llm=False).status_code == 200
    assert record.attempts[0]["error"] == "ConnectError: not sent"


@pytest.mark.parametrize(("llm", "opt_in", "tries"), [(False, False, 1), (True, False, 2), (False, True, 2)])
def test_read_timeout_after_sending_is_retried_only_for_llm_or_with_opt_in(llm, opt_in, tries) -> None:
    handler = scripted(httpx.ReadTimeout("slow"), httpx.Response(200, json={}))
    sender, _record, _ = make_sender(handler, retry_uncertain=opt_in)
    if tries == 1:
        with pytest.raises(poe.NetworkError, match="may already have charged"):
            sender.send(REQ, paid=True, llm=llm)
    else:
        sender.send(REQ, paid=True, llm=llm)
    assert len(handler.seen) == tries


def test_a_wait_longer_than_the_cap_fails_at_once() -> None:
    sender, record, sleeps = make_sender(scripted(httpx.Response(503, headers={"Retry-After": "500"})))
    with pytest.raises(poe.ServerError, match="longer than --max-retry-wait"):
        sender.send(REQ, paid=True, llm=False)
    assert sleeps == [] and len(record.attempts) == 1


# --- Retry-After parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "12"}, 12.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers, expected) -> None:
    assert poe.parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    now = time.time()
    assert poe.parse_retry_after({"Retry-After": formatdate(now + 30, usegmt=True)}, now=now) == pytest.approx(
        30, abs=1
    )


# --- the shared rate gate ---------------------------------------------------------------------------------


def test_rate_gate_pause_holds_every_worker_then_resumes_one_at_a_time() -> None:
    gate = poe.RateGate(concurrency=4)
    gate.pause(0.3)
    started: list[float] = []
    t0 = time.monotonic()

    def worker() -> None:
        with gate.slot():
            started.append(time.monotonic() - t0)
            time.sleep(0.1)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started.sort()
    assert started[0] >= 0.29  # nobody went during the pause
    assert started[1] - started[0] >= 0.09  # the first one after a pause goes alone
    assert gate.pauses == 1


# --- parameter mapping: every row of the published table --------------------------------------------------


@pytest.fixture(scope="module")
def models() -> dict[str, poe.ModelInfo]:
    import poe_emulator

    return {m["id"]: poe.ModelInfo.from_json(m) for m in poe_emulator.default_models()}


@pytest.mark.parametrize("row", poe.PARAMETER_MAPPING, ids=lambda r: f"{r.mode}-{'-'.join(r.given)}-{r.model}")
def test_parameter_mapping_table(row: poe.MappingRow, models) -> None:
    model = models.get(row.model) if row.model else None
    direct_route = "responses" if row.mode == "llm" else "direct"
    assert poe.route_params(row.mode, direct_route, dict(row.given), model)[0] == row.direct
    assert poe.route_params(row.mode, "chat", dict(row.given), model)[0] == row.chat


def test_sora_keeps_size_on_chat_because_it_declares_it(models) -> None:
    assert poe.map_params("video", "chat", {"size": "720x1280"}, models["sora-2"])[0] == {"size": "720x1280"}


def test_declared_values_are_checked_and_coerced(models) -> None:
    veo = models["veo-3.1"]
    assert poe.validate_params({"duration": 6, "seed": 7}, veo, frozenset()) == {"duration": "6", "seed": "7"}
    with pytest.raises(poe.UsageError, match="choose one of: 4, 6, 8"):
        poe.validate_params({"duration": "5"}, veo, frozenset())
    assert poe.validate_params({"anything": 1}, models["legacy-bot"], frozenset()) == {"anything": 1}


# --- what came back -------------------------------------------------------------------------------------


def test_media_urls_in_text_takes_markdown_then_bare_urls_once() -> None:
    text = "Here: ![image](https://cdn.test/a.png?w=1) and https://cdn.test/b.mp4. Again https://cdn.test/a.png?w=1"
    assert poe.media_urls_in_text(text) == ["https://cdn.test/a.png?w=1", "https://cdn.test/b.mp4"]


def test_responses_text_reads_output_items() -> None:
    body = {"output": [{"type": "reasoning"}, {"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]}
    assert poe.responses_text(body) == "hi"


@pytest.mark.parametrize(
    ("status", "cls", "code"),
    [(401, poe.AuthenticationError, 3), (402, poe.InsufficientPointsError, 4), (404, poe.NotFoundError, 5),
     (429, poe.RateLimitError, 6), (529, poe.ServerError, 7), (418, poe.RequestRejectedError, 5)],
)  # fmt: skip
def test_error_classes_and_exit_codes(status, cls, code) -> None:
    error = poe.error_from_response(httpx.Response(status, json={"error": {"message": "m", "type": "t"}}), "x")
    assert type(error) is cls and int(error.exit_code) == code and error.hint


# --- what is kept -----------------------------------------------------------------------------------------


def test_redact_removes_the_key_and_its_pieces() -> None:
    text = f"a {KEY} b {KEY[5:15]} c"
    cleaned = poe.redact(text, KEY)
    assert KEY not in cleaned and KEY[5:13] not in cleaned


def test_output_paths_are_beside_the_record(tmp_path: Path) -> None:
    rec = tmp_path / "fox.json"
    assert poe.output_path(rec, 0, 1, "image/png") == tmp_path / "fox.png"
    assert poe.output_path(rec, 1, 3, "video/mp4; codecs=x") == tmp_path / "fox-2.mp4"


def test_is_api_url_only_for_the_api_endpoints() -> None:
    base = "https://api.poe.com/v1"
    assert poe.is_api_url("https://api.poe.com/v1/videos/v1/content", base)
    assert not poe.is_api_url("https://pfst.cf2.poecdn.net/base/video/x", base)
    assert not poe.is_api_url("http://api.poe.com/v1/videos/v1/content", base)
    assert not poe.is_api_url("https://api.poe.com/media/x", base)
