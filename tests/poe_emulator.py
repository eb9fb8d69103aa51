"""A local emulator of the Poe API (OpenAI-compatible) for tests.

It speaks the wire formats described in /work/shared/poe-api.md: chat completions (plain and SSE),
the Responses API, direct images/audio, asynchronous video jobs, the model catalogue, usage/balance,
and a CDN-like ``/media/...`` tree.  Tests can script one-shot answers (``Reply``) or dropped
connections (``Drop``), and inspect every request received (``Recorded``).

Run standalone::

    uv run tests/poe_emulator.py --port 8765 --key poe-emulator-key
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import json as jsonlib
import logging
import math
import re
import secrets
import signal
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["Drop", "PoeEmulator", "Recorded", "Reply", "error_reply"]

CHUNK_SIZE = 64 * 1024
PAID_PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/images", "/v1/audio", "/v1/videos")
COSTS = {"text": 10, "image": 300, "audio": 200, "video": 3000}
MEDIA_KINDS = ("image", "video", "audio")

STANDARD_CHAT_KEYS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "n",
        "response_format",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "user",
        "logprobs",
        "top_logprobs",
        "metadata",
        "reasoning_effort",
    }
)
STANDARD_RESPONSES_KEYS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "stream_options",
        "max_output_tokens",
        "temperature",
        "top_p",
        "reasoning",
        "text",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "previous_response_id",
        "metadata",
        "store",
        "user",
        "truncation",
        "include",
        "background",
        "service_tier",
        "top_logprobs",
        "max_tool_calls",
        "prompt_cache_key",
        "safety_identifier",
        "conversation",
        "prompt",
    }
)


# --------------------------------------------------------------------------- public data types


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    json: Any = None
    body: bytes | str | None = None
    headers: dict[str, str] | None = None
    content_type: str | None = None
    delay: float = 0.0


@dataclass
class Drop:
    """A dropped connection: ``before_headers`` (nothing written) or ``mid_body`` (truncated body)."""

    when: str = "before_headers"
    partial_body: bytes = b'{"id": "chatcmpl-'
    delay: float = 0.0


def chat_completion(
    content: str,
    model: str = "gpt-5",
    *,
    usage: dict[str, int] | None = None,
    created: int = 0,
    completion_id: str = "chatcmpl-x",
) -> dict[str, Any]:
    """A chat completion in the observed Poe shape (what the emulator answers, and what tests script)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage or {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def error_reply(
    status: int,
    type_: str,
    message: str,
    code: Any = None,
    headers: dict[str, str] | None = None,
    *,
    param: str | None = None,
) -> Reply:
    """A Poe-style error answer: ``{"error": {"message", "type", "code", "param", "metadata"}}``."""
    body = {"error": {"message": message, "type": type_, "code": code, "param": param, "metadata": {}}}
    return Reply(status=status, json=body, headers=dict(headers) if headers else None)


@dataclass
class Recorded:
    """One request as received by the emulator."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    authorized: bool
    has_auth_header: bool
    host: str
    time: float
    form: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


class _DroppedConnection(ConnectionError):
    """Raised inside the WSGI app after the socket was cut on purpose (werkzeug ignores it)."""


def _hex(n: int = 12) -> str:
    return secrets.token_hex(n)


def _tiny_png() -> bytes:
    """A valid 1x1 RGBA PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x80\x00\xff")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


TINY_PNG = _tiny_png()


def _magic(fmt: str, size: int) -> bytes:
    if fmt == "png":
        return b"\x89PNG\r\n\x1a\n"
    if fmt == "jpeg":
        return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
    if fmt == "mp3":
        return b"ID3\x04\x00\x00\x00\x00\x00\x00"
    if fmt == "mp4":
        return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    if fmt == "webp":
        return b"RIFF" + struct.pack("<I", max(size - 8, 0)) + b"WEBPVP8 "
    return b""


MEDIA_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "mp3": "audio/mpeg",
    "mp4": "video/mp4",
    "webp": "image/webp",
}


def _media_stream(fmt: str, size: int) -> Iterator[bytes]:
    """Yield ``size`` bytes starting with the format's magic, in 64 KiB chunks (never all in memory)."""
    head = _magic(fmt, size)[:size]
    filler = bytes(CHUNK_SIZE)
    remaining = size
    if head:
        first = head + filler[: max(0, min(CHUNK_SIZE, size) - len(head))]
        yield first
        remaining -= len(first)
    while remaining > 0:
        n = min(CHUNK_SIZE, remaining)
        yield filler if n == CHUNK_SIZE else filler[:n]
        remaining -= n


def _param(name: str, schema: dict[str, Any], default: Any, description: str) -> dict[str, Any]:
    return {"name": name, "schema": schema, "default_value": default, "description": description}


def _enum(values: list[str], default: str, description: str, name: str) -> dict[str, Any]:
    return _param(name, {"type": "string", "enum": values}, default, description)


def _model(
    model_id: str,
    display: str,
    owner: str,
    inputs: list[str],
    outputs: list[str],
    endpoints: list[str],
    params: list[dict[str, Any]] | None,
    *,
    pricing: dict[str, Any] | None = None,
    features: list[str] | None = None,
    reasoning: dict[str, Any] | None = None,
    context_length: int = 200_000,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "created": 1_760_000_000,
        "owned_by": owner,
        "description": f"{display} (emulated).",
        "root": model_id,
        "architecture": {
            "input_modalities": inputs,
            "output_modalities": outputs,
            "modality": f"{','.join(inputs)}->{','.join(outputs)}",
        },
        "supported_endpoints": endpoints,
        "supported_features": features if features is not None else [],
        "pricing": pricing,
        "context_window": {"context_length": context_length, "max_output_tokens": 64_000},
        "metadata": {
            "display_name": display,
            "url": f"https://poe.com/{display}",
            "image": {"url": f"https://qph.cf2.poecdn.net/main-thumb-{model_id}.jpeg", "width": 200},
        },
        "reasoning": reasoning,
    }
    if params is not None:
        entry["parameters"] = params
    return entry


def default_models() -> list[dict[str, Any]]:
    """The default catalogue (a fresh deep copy each call)."""
    text_price = {"prompt": "0.0000026", "completion": "0.000013", "image": None, "request": None}
    nano_params = [
        _enum(
            ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"],
            "1:1",
            "Aspect ratio of the image.",
            "aspect_ratio",
        ),
        _enum(["1K", "2K", "4K"], "1K", "Resolution of the image.", "image_size"),
        _param("image_only", {"type": "boolean"}, False, "Answer with the image only."),
        _param("web_search", {"type": "boolean"}, False, "Ground the image with a web search."),
    ]
    veo_common = [
        _enum(["16:9", "9:16"], "16:9", "Aspect ratio of the video.", "aspect_ratio"),
        _enum(["4", "6", "8"], "8", "Duration in seconds.", "duration"),
        _enum(["720p", "1080p"], "720p", "Resolution of the video.", "resolution"),
    ]
    return [
        _model(
            "claude-sonnet-4.6",
            "Claude-Sonnet-4.6",
            "Anthropic",
            ["text", "image"],
            ["text"],
            ["/v1/chat/completions", "/v1/messages"],
            [],
            pricing=text_price,
            features=["tools"],
        ),
        _model(
            "gpt-5",
            "GPT-5",
            "OpenAI",
            ["text", "image"],
            ["text"],
            ["/v1/chat/completions", "/v1/responses"],
            [
                _enum(["low", "medium", "high"], "medium", "How hard the model thinks.", "reasoning_effort"),
            ],
            pricing=text_price,
            features=["tools", "web_search"],
            reasoning={"budget": None, "required": True, "supports_reasoning_effort": True},
            context_length=400_000,
        ),
        _model("legacy-bot", "Legacy-Bot", "Poe", ["text"], ["text"], [], None, context_length=8_192),
        _model(
            "nano-banana-2",
            "Nano-Banana-2",
            "Google",
            ["text", "image"],
            ["image"],
            ["/v1/chat/completions", "/v1/images"],
            copy.deepcopy(nano_params),
            pricing={"prompt": None, "completion": None, "image": None, "request": "0.04"},
            features=["web_search"],
        ),
        _model(
            "nano-banana-pro",
            "Nano-Banana-Pro",
            "Google",
            ["text", "image"],
            ["image"],
            [],
            copy.deepcopy(nano_params),
            pricing={"prompt": None, "completion": None, "image": None, "request": "0.13"},
        ),
        _model(
            "gpt-image-1",
            "GPT-Image-1",
            "OpenAI",
            ["text", "image"],
            ["image"],
            ["/v1/images"],
            [
                _enum(["1:1", "3:2", "2:3"], "1:1", "Aspect ratio of the image.", "aspect"),
                _enum(["low", "medium", "high"], "high", "Rendering quality.", "quality"),
            ],
            pricing={"prompt": None, "completion": None, "image": None, "request": "0.05"},
        ),
        _model(
            "imagen-4",
            "Imagen-4",
            "Google",
            ["text"],
            ["image"],
            [],
            [
                _enum(["1:1", "16:9", "9:16", "4:3", "3:4"], "1:1", "Aspect ratio of the image.", "aspect_ratio"),
                _param("seed", {"type": "integer"}, None, "Random seed."),
            ],
        ),
        _model(
            "veo-3.1",
            "Veo-3.1",
            "Google",
            ["text", "image"],
            ["video"],
            ["/v1/videos"],
            [
                *copy.deepcopy(veo_common),
                _param("seed", {"type": "string"}, None, "Random seed."),
                _param("no", {"type": "string"}, None, "Negative prompt."),
                _param("silent", {"type": "boolean"}, False, "Generate without audio."),
            ],
            pricing={"prompt": None, "completion": None, "image": None, "request": "3.2"},
        ),
        _model(
            "sora-2",
            "Sora-2",
            "OpenAI",
            ["text", "image"],
            ["video"],
            ["/v1/videos"],
            [
                _enum(["1280x720", "720x1280"], "720x1280", "Size of the video.", "size"),
                _enum(["4", "8", "12", "16", "20"], "4", "Duration in seconds.", "duration"),
            ],
        ),
        _model("veo-3", "Veo-3", "Google", ["text"], ["video"], [], copy.deepcopy(veo_common)),
        _model(
            "lyria-3",
            "Lyria-3",
            "Google",
            ["text"],
            ["audio"],
            [],
            [_param("full_song", {"type": "boolean"}, False, "Generate a full song.")],
        ),
        _model(
            "elevenlabs-v3",
            "ElevenLabs-v3",
            "ElevenLabs",
            ["text"],
            ["audio"],
            ["/v1/audio"],
            [
                _param("speaker_count", {"type": "integer", "minimum": 1, "maximum": 4}, 1, "Speakers."),
                _param("voice_1", {"type": "string"}, "Rachel", "Voice of the first speaker."),
            ],
        ),
    ]


def _check_value(schema: dict[str, Any], value: Any) -> str | None:
    """A small JSON-Schema subset check (type, enum, minimum, maximum). Returns a problem or None."""
    typ = schema.get("type")
    checks: dict[str, Callable[[Any], bool]] = {
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if isinstance(typ, str) and typ in checks and not checks[typ](value):
        return f"must be of type {typ}"
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        return "must be one of " + ", ".join(repr(e) for e in enum)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"must be >= {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"must be <= {schema['maximum']}"
    return None


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _split_stream(text: str) -> list[str]:
    """Split text into word-ish pieces that concatenate back to the text."""
    pieces = re.findall(r"\S+\s*|\s+", text)
    return pieces or [""]


def _matches(pattern: str, path: str) -> bool:
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


class _QuietHandler(WSGIRequestHandler):
    """Request handler that never logs to stderr."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Small header/body writes must not wait for delayed ACKs (Nagle): keeps each request ~1 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None

    def log_error(self, format: str, *args: Any) -> None:
        return None

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def log(self, type: str, message: str, *args: Any) -> None:
        return None


def _quiet_handle_error(request: Any, client_address: Any) -> None:
    return None


@dataclass
class _VideoJob:
    id: str
    model: str
    prompt: str
    seconds: str
    size: str
    created_at: int
    status: str = "queued"
    progress: int = 0
    polls: int = 0
    completed_at: int | None = None
    expires_at: int | None = None
    error: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "video",
            "status": self.status,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "expires_at": self.expires_at,
            "model": self.model,
            "seconds": self.seconds,
            "size": self.size,
            "progress": self.progress,
            "error": self.error,
            "remixed_from_video_id": None,
            "prompt": self.prompt,
        }


class _HttpError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _fail(status: int, type_: str, message: str, code: Any = None, param: str | None = None) -> _HttpError:
    return _HttpError(error_reply(status, type_, message, code, param=param))


# --------------------------------------------------------------------------- the emulator


class PoeEmulator:
    """A threaded werkzeug HTTP server emulating the Poe API. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        api_key: str = "poe-test-key-0123456789abcdef",
        *,
        latency: float = 0.0,
        video_polls: int = 2,
        rate_limit_rps: float | None = None,
        balance: int = 100_000,
    ) -> None:
        self.api_key = api_key
        self.latency = latency
        self.video_polls = video_polls
        self.rate_limit_rps = rate_limit_rps
        self.balance = balance
        self.video_outcome = "completed"
        self.image_shape = "url"
        self.audio_shape = "url"
        self.chat_media_shape = "markdown"
        self.media_size = 4096
        self.redirect_content_to_alt_host = False
        self.strict_param_values = True
        self.models: list[dict[str, Any]] = default_models()
        self.requests: list[Recorded] = []
        self.rate_limited = 0
        self.points_history: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._scripts: list[tuple[str, str, deque[Reply | Drop]]] = []
        self._videos: dict[str, _VideoJob] = {}
        self._tokens: float | None = None
        self._tokens_at = 0.0
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.host = "127.0.0.1"
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> PoeEmulator:
        if self._server is not None:
            return self
        logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
        try:
            server = make_server(host, port, self._wsgi, threaded=True, request_handler=_QuietHandler)
        except SystemExit as exc:  # werkzeug exits the process when the port is taken
            raise OSError(f"Poe emulator cannot listen on {host}:{port}") from exc
        server.handle_error = _quiet_handle_error  # type: ignore[method-assign]
        self._server = server
        self.host = host
        self.port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="poe-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = None
        self._thread = None
        if server is not None:
            server.shutdown()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> PoeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def alt_root_url(self) -> str:
        return f"http://localhost:{self.port}"

    # ------------------------------------------------------------------ test API

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        with self._lock:
            recorded = list(self.requests)
        return [
            r
            for r in recorded
            if (method is None or r.method == method.upper()) and (path is None or _matches(path, r.path))
        ]

    def paid_calls(self) -> list[Recorded]:
        return [r for r in self.calls("POST") if r.path in PAID_PATHS]

    def script(self, method: str, path: str, *replies: Reply | Drop) -> None:
        with self._lock:
            for m, p, queue in self._scripts:
                if m == method.upper() and p == path:
                    queue.extend(replies)
                    return
            self._scripts.append((method.upper(), path, deque(replies)))

    def video_job(self, video_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._videos.get(video_id)
            return job.as_json() if job else None

    # ------------------------------------------------------------------ WSGI plumbing

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        rid = "req_" + _hex(12)
        try:
            response = self._dispatch(request, environ, rid)
        except _DroppedConnection:
            raise
        except _HttpError as err:
            response = self._make_response(err.reply)
        except Exception as exc:  # never let werkzeug print a traceback
            response = self._make_response(
                error_reply(500, "provider_error", f"emulator failure: {type(exc).__name__}")
            )
        if "x-request-id" not in response.headers:
            response.headers["x-request-id"] = rid
        return response(environ, start_response)

    def _record(self, request: Request) -> Recorded:
        body = request.get_data(cache=True)
        parsed: Any = None
        if body:
            try:
                parsed = jsonlib.loads(body)
            except (ValueError, UnicodeDecodeError):
                parsed = None
        form: dict[str, str] = {}
        if request.mimetype == "multipart/form-data" or request.mimetype.endswith("x-www-form-urlencoded"):
            with contextlib.suppress(Exception):
                form = {k: v for k, v in request.form.items()}
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            k = key.lower()
            headers[k] = f"{headers[k]}, {value}" if k in headers else value
        auth = request.headers.get("Authorization")
        authorized = False
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            authorized = scheme.lower() == "bearer" and secrets.compare_digest(
                token.strip().encode(), self.api_key.encode()
            )
        rec = Recorded(
            method=request.method.upper(),
            path=request.path,
            query={k: v for k, v in request.args.items()},
            headers=headers,
            body=body,
            json=parsed,
            authorized=authorized,
            has_auth_header=auth is not None,
            host=request.headers.get("Host", ""),
            time=time.time(),
            form=form,
        )
        with self._lock:
            self.requests.append(rec)
        return rec

    def _next_script(self, method: str, path: str) -> Reply | Drop | None:
        with self._lock:
            for m, pattern, queue in self._scripts:
                if queue and m == method and _matches(pattern, path):
                    return queue.popleft()
        return None

    def _make_response(self, reply: Reply) -> Response:
        headers = dict(reply.headers or {})
        if reply.json is not None:
            data: bytes = jsonlib.dumps(reply.json).encode()
            ctype = reply.content_type or "application/json"
        elif reply.body is not None:
            data = reply.body.encode() if isinstance(reply.body, str) else reply.body
            default = "text/plain; charset=utf-8" if isinstance(reply.body, str) else "application/octet-stream"
            ctype = reply.content_type or default
        else:
            data = b""
            ctype = reply.content_type or "application/json"
        response = Response(data, status=reply.status, content_type=ctype)
        for k, v in headers.items():
            response.headers[k] = v
        return response

    def _drop(self, environ: WSGIEnvironment, drop: Drop, rid: str) -> None:
        sock: socket.socket | None = environ.get("werkzeug.socket")
        if sock is None:
            raise _DroppedConnection("no socket to drop")
        with contextlib.suppress(OSError):
            if drop.when == "mid_body":
                head = (
                    "HTTP/1.1 200 OK\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(drop.partial_body) + 4096}\r\n"
                    f"x-request-id: {rid}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                sock.sendall(head + drop.partial_body)
            sock.shutdown(socket.SHUT_RDWR)
        raise _DroppedConnection("dropped on purpose")

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, request: Request, environ: WSGIEnvironment, rid: str) -> Response:
        rec = self._record(request)
        method, path = rec.method, rec.path

        scripted = self._next_script(method, path)
        if scripted is not None:
            if scripted.delay > 0:
                time.sleep(scripted.delay)
            if isinstance(scripted, Drop):
                self._drop(environ, scripted, rid)
            assert isinstance(scripted, Reply)
            return self._make_response(scripted)

        if path.startswith("/media/"):
            if method not in ("GET", "HEAD"):
                raise _fail(405, "invalid_request_error", "Method not allowed")
            return self._media(path)
        if path == "/v1/models" and method == "GET":
            return self._json({"object": "list", "data": copy.deepcopy(self.models)})

        if not rec.authorized:
            raise _fail(401, "authentication_error", "Invalid API key", "invalid_api_key")

        paid = method == "POST" and path in PAID_PATHS
        if paid:
            self._rate_limit()
            if self.latency > 0 and not self._is_stream(rec):
                time.sleep(self.latency)

        if method == "POST":
            body = self._json_body(rec, request)
            if path == "/v1/chat/completions":
                return self._chat(body)
            if path == "/v1/responses":
                return self._responses(body)
            if path == "/v1/images":
                return self._images(body)
            if path == "/v1/audio":
                return self._audio(body)
            if path == "/v1/videos":
                return self._video_create(body, rec, request)
        if method == "GET":
            m = re.fullmatch(r"/v1/videos/([^/]+)", path)
            if m:
                return self._video_poll(m.group(1))
            m = re.fullmatch(r"/v1/videos/([^/]+)/content", path)
            if m:
                return self._video_content(m.group(1), rec.query.get("variant", "video"))
            if path == "/usage/current_balance":
                return self._balance()
            if path == "/usage/points_history":
                return self._history(rec.query)
            if path.startswith("/v1/models/"):
                wanted = self._find_model(path[len("/v1/models/") :])
                return self._json(copy.deepcopy(wanted))
        known = {*PAID_PATHS, "/v1/models", "/usage/current_balance", "/usage/points_history"}
        if path in known:
            raise _fail(405, "invalid_request_error", f"Method {method} not allowed on {path}")
        raise _fail(404, "not_found_error", f"No route for {method} {path}", "not_found")

    # ------------------------------------------------------------------ shared pieces

    def _json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return self._make_response(Reply(status=status, json=payload, headers=headers))

    @staticmethod
    def _is_stream(rec: Recorded) -> bool:
        return isinstance(rec.json, dict) and rec.json.get("stream") is True

    def _json_body(self, rec: Recorded, request: Request) -> dict[str, Any]:
        if request.mimetype == "multipart/form-data":
            fields: dict[str, Any] = dict(rec.form)
            for name, storage in request.files.items():
                fields[name] = storage
            return fields
        if not isinstance(rec.json, dict):
            raise _fail(400, "invalid_request_error", "Request body must be a JSON object", "invalid_json")
        if "extra_body" in rec.json:
            raise _fail(
                400,
                "invalid_request_error",
                "Unknown parameter: 'extra_body'. Send bot parameters as top-level keys.",
                "unknown_parameter",
                "extra_body",
            )
        return rec.json

    def _rate_limit(self) -> None:
        rps = self.rate_limit_rps
        if not rps or rps <= 0:
            return
        capacity = max(1.0, float(rps))
        now = time.monotonic()
        with self._lock:
            if self._tokens is None:
                self._tokens = capacity
            else:
                self._tokens = min(capacity, self._tokens + (now - self._tokens_at) * rps)
            self._tokens_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            wait = (1.0 - self._tokens) / rps
            self.rate_limited += 1
        raise _HttpError(
            error_reply(
                429,
                "rate_limit_error",
                "Rate limit exceeded. Please slow down.",
                "rate_limit_exceeded",
                headers={
                    "Retry-After": str(max(1, math.ceil(wait))),
                    "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                },
            )
        )

    def _find_model(self, name: Any) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise _fail(400, "invalid_request_error", "Missing required parameter: 'model'", param="model")
        wanted = name.lower()
        for model in self.models:
            if str(model.get("id", "")).lower() == wanted:
                return model
        raise _fail(404, "not_found_error", f"Model '{name}' not found", "model_not_found", "model")

    @staticmethod
    def _kind(model: dict[str, Any]) -> str:
        outputs = (model.get("architecture") or {}).get("output_modalities") or []
        for kind in MEDIA_KINDS:
            if kind in outputs:
                return kind
        return "text"

    def _check_params(self, model: dict[str, Any], body: dict[str, Any], standard: frozenset[str] | None) -> None:
        """Strict key validation (when ``standard`` is given) and value checks for declared parameters."""
        declared = model.get("parameters")
        if declared is None:
            return
        by_name = {p.get("name"): p for p in declared if isinstance(p, dict)}
        for key, value in body.items():
            if key in by_name:
                if not self.strict_param_values:
                    continue
                schema = by_name[key].get("schema") or {}
                problem = _check_value(schema, value) if isinstance(schema, dict) else None
                if problem:
                    raise _fail(
                        400,
                        "invalid_request_error",
                        f"Invalid value for parameter '{key}' of model '{model['id']}': {problem}",
                        "invalid_parameter_value",
                        key,
                    )
            elif standard is not None and key not in standard:
                raise _fail(
                    400,
                    "invalid_request_error",
                    f"Unknown parameter: '{key}' is not supported by model '{model['id']}'",
                    "unknown_parameter",
                    key,
                )

    def _charge(self, kind: str, model_id: str, query_id: str) -> None:
        cost = COSTS.get(kind, 10)
        with self._lock:
            if self.balance < cost:
                raise _fail(402, "insufficient_credits", "You do not have enough points for this request.", 402)
            self.balance -= cost
            self.points_history.insert(
                0,
                {
                    "creation_time": int(time.time() * 1_000_000),
                    "bot_name": model_id,
                    "query_id": query_id,
                    "cost_points": cost,
                    "cost_usd": round(cost * 0.00003, 6),
                    "cost_breakdown_in_points": {"base": cost},
                    "usage_type": "API",
                },
            )

    def _media_url(self, kind: str) -> str:
        if kind == "image":
            return f"{self.root_url}/media/image/{_hex(16)}.png?w=1024&h=1024"
        if kind == "audio":
            return f"{self.root_url}/media/audio/{_hex(16)}.mp3"
        return f"{self.root_url}/media/video/{_hex(16)}.mp4"

    def _answer_text(self, model: dict[str, Any], user_text: str) -> str:
        kind = self._kind(model)
        if kind == "text":
            return f"Echo from {model['id']}: {user_text}"
        shape = self.chat_media_shape
        if shape == "text_only":
            return f"I can't create that {kind}."
        url = self._media_url(kind)
        if shape == "bare":
            return url
        markdown = f"![{kind}]({url})" if kind == "image" else url
        if shape == "both":
            return f"![{kind}]({url})\n\n{self._media_url(kind)}"
        return markdown

    # ------------------------------------------------------------------ chat completions

    @staticmethod
    def _user_text(content: Any, text_types: tuple[str, ...], image_types: tuple[str, ...]) -> str:
        if isinstance(content, str):
            return content
        if not isinstance(content, list):
            return ""
        texts: list[str] = []
        images = files = 0
        for part in content:
            if not isinstance(part, dict):
                continue
            ptype = part.get("type")
            if ptype in text_types and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif ptype in image_types:
                images += 1
            elif ptype in ("file", "input_file", "input_audio"):
                files += 1
        text = " ".join(texts)
        if images:
            text += f" [images: {images}]"
        if files:
            text += f" [files: {files}]"
        return text

    def _chat(self, body: dict[str, Any]) -> Response:
        if not body.get("model"):
            raise _fail(400, "invalid_request_error", "Missing required parameter: 'model'", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _fail(400, "invalid_request_error", "Missing required parameter: 'messages'", param="messages")
        if "n" in body and body["n"] != 1:
            raise _fail(400, "invalid_request_error", "Only n=1 is supported", param="n")
        temp = body.get("temperature")
        if temp is not None and (not isinstance(temp, int | float) or isinstance(temp, bool) or not 0 <= temp <= 2):
            raise _fail(400, "invalid_request_error", "temperature must be between 0 and 2", param="temperature")
        model = self._find_model(body.get("model"))
        self._check_params(model, body, STANDARD_CHAT_KEYS)

        user_text = ""
        prompt_tokens = 0
        for msg in messages:
            if not isinstance(msg, dict):
                raise _fail(400, "invalid_request_error", "Each message must be an object", param="messages")
            text = self._user_text(msg.get("content"), ("text",), ("image_url",))
            prompt_tokens += _words(text)
            if msg.get("role") == "user":
                user_text = text
        answer = self._answer_text(model, user_text)
        completion_id = "chatcmpl-" + _hex(12)
        self._charge(self._kind(model), model["id"], completion_id)
        created = int(time.time())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": _words(answer),
            "total_tokens": prompt_tokens + _words(answer),
        }
        if body.get("stream") is True:
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            gen = self._chat_stream(completion_id, created, model["id"], answer, usage, include_usage)
            return Response(gen, status=200, content_type="text/event-stream; charset=utf-8")
        return self._json(
            chat_completion(answer, model["id"], usage=usage, created=created, completion_id=completion_id)
        )

    def _chat_stream(
        self,
        completion_id: str,
        created: int,
        model_id: str,
        answer: str,
        usage: dict[str, int],
        include_usage: bool,
    ) -> Iterator[bytes]:
        pieces = _split_stream(answer)
        pause = self.latency / (len(pieces) + 1) if self.latency > 0 else 0.0

        def chunk(delta: dict[str, Any], finish: str | None, choices: bool = True) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_id,
                "choices": (
                    [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if choices else []
                ),
            }
            if include_usage:
                payload["usage"] = None if choices else usage
            return b"data: " + jsonlib.dumps(payload).encode() + b"\n\n"

        if pause:
            time.sleep(pause)
        yield chunk({"role": "assistant", "content": ""}, None)
        for piece in pieces:
            if pause:
                time.sleep(pause)
            yield chunk({"content": piece}, None)
        yield chunk({}, "stop")
        if include_usage:
            yield chunk({}, None, choices=False)
        yield b"data: [DONE]\n\n"

    # ------------------------------------------------------------------ responses API

    def _responses(self, body: dict[str, Any]) -> Response:
        if not body.get("model"):
            raise _fail(400, "invalid_request_error", "Missing required parameter: 'model'", param="model")
        if "input" not in body:
            raise _fail(400, "invalid_request_error", "Missing required parameter: 'input'", param="input")
        model = self._find_model(body.get("model"))
        self._check_params(model, body, STANDARD_RESPONSES_KEYS)
        raw = body["input"]
        user_text = ""
        if isinstance(raw, str):
            user_text = raw
        elif isinstance(raw, list):
            for item in raw:
                if isinstance(item, dict) and item.get("role") == "user":
                    user_text = self._user_text(
                        item.get("content"), ("input_text", "text"), ("input_image", "image_url")
                    )
        else:
            raise _fail(400, "invalid_request_error", "'input' must be a string or a list", param="input")
        answer = self._answer_text(model, user_text)
        resp_id = "resp_" + _hex(24)
        msg_id = "msg_" + _hex(24)
        self._charge(self._kind(model), model["id"], resp_id)
        in_tokens = _words(user_text) + _words(str(body.get("instructions") or ""))
        out_tokens = _words(answer)
        created = int(time.time())
        usage = {
            "input_tokens": in_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": out_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": in_tokens + out_tokens,
        }
        part = {"type": "output_text", "text": answer, "annotations": [], "logprobs": []}
        message = {
            "type": "message",
            "id": msg_id,
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        asked = body.get("reasoning")
        reasoning: dict[str, Any] = asked if isinstance(asked, dict) else {}
        full: dict[str, Any] = {
            "id": resp_id,
            "object": "response",
            "created_at": created,
            "status": "completed",
            "background": False,
            "completed_at": created,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": model["id"],
            "output": [message],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "service_tier": "default",
            "store": False,
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }
        if body.get("stream") is True:
            return Response(self._responses_stream(full, answer), content_type="text/event-stream; charset=utf-8")
        return self._json(full)

    def _responses_stream(self, full: dict[str, Any], answer: str) -> Iterator[bytes]:
        pieces = _split_stream(answer)
        pause = self.latency / (len(pieces) + 1) if self.latency > 0 else 0.0
        seq = 0
        message = full["output"][0]
        msg_id = message["id"]

        def event(etype: str, **fields: Any) -> bytes:
            nonlocal seq
            payload = {"type": etype, "sequence_number": seq, **fields}
            seq += 1
            return f"event: {etype}\ndata: {jsonlib.dumps(payload)}\n\n".encode()

        pending = dict(full, status="in_progress", output=[], usage=None, completed_at=None)
        empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        if pause:
            time.sleep(pause)
        yield event("response.created", response=pending)
        yield event("response.in_progress", response=pending)
        yield event(
            "response.output_item.added",
            output_index=0,
            item=dict(message, status="in_progress", content=[]),
        )
        yield event("response.content_part.added", item_id=msg_id, output_index=0, content_index=0, part=empty_part)
        for piece in pieces:
            if pause:
                time.sleep(pause)
            yield event(
                "response.output_text.delta",
                item_id=msg_id,
                output_index=0,
                content_index=0,
                delta=piece,
                logprobs=[],
            )
        yield event(
            "response.output_text.done",
            item_id=msg_id,
            output_index=0,
            content_index=0,
            text=answer,
            logprobs=[],
        )
        yield event(
            "response.content_part.done",
            item_id=msg_id,
            output_index=0,
            content_index=0,
            part=message["content"][0],
        )
        yield event("response.output_item.done", output_index=0, item=message)
        yield event("response.completed", response=full)

    # ------------------------------------------------------------------ images / audio

    def _direct_model(self, body: dict[str, Any], endpoint: str) -> dict[str, Any]:
        model = self._find_model(body.get("model"))
        if endpoint not in (model.get("supported_endpoints") or []):
            raise _fail(
                404,
                "not_found_error",
                f"Model '{model['id']}' is not available on {endpoint}",
                "endpoint_not_supported",
            )
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _fail(400, "invalid_request_error", "Missing required parameter: 'prompt'", param="prompt")
        self._check_params(model, body, None)
        return model

    def _binary(self, fmt: str, size: int) -> Response:
        response = Response(_media_stream(fmt, size), status=200, mimetype=MEDIA_TYPES[fmt], direct_passthrough=True)
        response.headers["Content-Length"] = str(size)
        return response

    def _images(self, body: dict[str, Any]) -> Response:
        model = self._direct_model(body, "/v1/images")
        query_id = "img_" + _hex(12)
        self._charge("image", model["id"], query_id)
        created = int(time.time())
        n = body.get("n", 1)
        count = n if isinstance(n, int) and 1 <= n <= 4 else 1
        shape = self.image_shape
        if shape == "binary":
            return self._binary("png", self.media_size)
        if shape == "b64_json":
            b64 = base64.b64encode(TINY_PNG).decode()
            return self._json({"created": created, "data": [{"b64_json": b64} for _ in range(count)]})
        if shape == "top_url":
            return self._json({"url": self._media_url("image")})
        return self._json({"created": created, "data": [{"url": self._media_url("image")} for _ in range(count)]})

    def _audio(self, body: dict[str, Any]) -> Response:
        model = self._direct_model(body, "/v1/audio")
        self._charge("audio", model["id"], "aud_" + _hex(12))
        if self.audio_shape == "binary":
            return self._binary("mp3", self.media_size)
        return self._json({"created": int(time.time()), "data": [{"url": self._media_url("audio")}]})

    # ------------------------------------------------------------------ videos

    def _video_create(self, body: dict[str, Any], rec: Recorded, request: Request) -> Response:
        multipart = request.mimetype == "multipart/form-data"
        model = self._find_model(body.get("model"))
        if "/v1/videos" not in (model.get("supported_endpoints") or []):
            raise _fail(404, "not_found_error", f"Model '{model['id']}' is not available on /v1/videos", "not_found")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _fail(400, "invalid_request_error", "Missing required parameter: 'prompt'", param="prompt")
        seconds_raw = body.get("seconds")
        if seconds_raw is None:
            seconds = 4 if model["id"].startswith("sora") else 8
        elif multipart and isinstance(seconds_raw, str) and re.fullmatch(r"\d+", seconds_raw):
            seconds = int(seconds_raw)
        elif isinstance(seconds_raw, int) and not isinstance(seconds_raw, bool):
            seconds = seconds_raw
        else:
            raise _fail(400, "invalid_request_error", "'seconds' must be an integer", param="seconds")
        if seconds <= 0:
            raise _fail(400, "invalid_request_error", "'seconds' must be positive", param="seconds")
        size = body.get("size", "720x1280")
        if not isinstance(size, str) or not re.fullmatch(r"\d+x\d+", size):
            raise _fail(400, "invalid_request_error", "'size' must look like WIDTHxHEIGHT", param="size")
        image = body.get("input_image")
        if image is not None:
            if not isinstance(image, str):
                raise _fail(400, "invalid_request_error", "'input_image' must be base64", param="input_image")
            data = image.split(",", 1)[1] if image.startswith("data:") else image
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise _fail(
                    400, "invalid_request_error", "'input_image' is not valid base64", param="input_image"
                ) from None
        extra = {} if multipart else {k: v for k, v in body.items() if k not in ("seconds", "size")}
        self._check_params(model, extra, None)
        job = _VideoJob(
            id="video_" + _hex(16),
            model=model["id"],
            prompt=prompt,
            seconds=str(seconds),
            size=size,
            created_at=int(time.time()),
        )
        self._charge("video", model["id"], job.id)
        with self._lock:
            self._videos[job.id] = job
            payload = job.as_json()
        return self._json(payload)

    def _video_poll(self, video_id: str) -> Response:
        with self._lock:
            job = self._videos.get(video_id)
            if job is None:
                raise _fail(404, "not_found_error", f"Video '{video_id}' not found", "not_found")
            if job.status in ("queued", "in_progress"):
                job.polls += 1
                if self.video_outcome == "stuck":
                    job.status, job.progress = "queued", 0
                elif job.polls >= max(1, self.video_polls):
                    now = int(time.time())
                    if self.video_outcome == "failed":
                        job.status = "failed"
                        job.error = {
                            "code": "moderation_blocked",
                            "message": "The prompt was blocked by safety filters.",
                        }
                        job.completed_at = now
                    else:
                        job.status, job.progress = "completed", 100
                        job.completed_at = now
                        job.expires_at = now + 86_400
                else:
                    job.status = "in_progress"
                    job.progress = min(99, max(1, int(100 * job.polls / max(1, self.video_polls))))
            payload = job.as_json()
        return self._json(payload)

    def _video_content(self, video_id: str, variant: str) -> Response:
        with self._lock:
            job = self._videos.get(video_id)
            status = job.status if job else None
        if job is None:
            raise _fail(404, "not_found_error", f"Video '{video_id}' not found", "not_found")
        if status != "completed":
            raise _fail(404, "not_found_error", f"Video '{video_id}' is not ready (status {status})", "not_ready")
        if variant == "thumbnail":
            return self._binary("webp", min(self.media_size, 4096))
        if variant == "spritesheet":
            return self._binary("jpeg", min(self.media_size, 4096))
        if variant != "video":
            raise _fail(400, "invalid_request_error", f"Unknown variant '{variant}'", param="variant")
        if self.redirect_content_to_alt_host:
            response = Response(b"", status=302)
            response.headers["Location"] = f"{self.alt_root_url}/media/video/{video_id}.mp4"
            return response
        return self._binary("mp4", self.media_size)

    # ------------------------------------------------------------------ media CDN

    def _media(self, path: str) -> Response:
        parts = path.split("/")  # ["", "media", kind, name...]
        kind = parts[2] if len(parts) > 2 else ""
        name = parts[-1] if len(parts) > 3 else ""
        if kind == "expired":
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                "<Message>Request has expired</Message></Error>"
            )
            return self._make_response(Reply(status=403, body=xml, content_type="application/xml"))
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        by_ext = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp", "mp3": "mp3", "mp4": "mp4"}
        by_kind = {"image": "png", "audio": "mp3", "video": "mp4", "webp": "webp"}
        if kind not in by_kind or not name:
            raise _fail(404, "not_found_error", "No such media", "not_found")
        fmt = by_ext.get(ext, by_kind[kind])
        return self._binary(fmt, self.media_size)

    # ------------------------------------------------------------------ usage

    def _balance(self) -> Response:
        with self._lock:
            balance = self.balance
        return self._json(
            {
                "current_point_balance": balance,
                "subscription_point_balance": balance,
                "addon_point_balance": 0,
                "next_grant_time": int((time.time() + 86_400) * 1_000_000),
            }
        )

    def _history(self, query: dict[str, str]) -> Response:
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise _fail(400, "invalid_request_error", "'limit' must be an integer", param="limit") from None
        limit = max(1, min(limit, 100))
        with self._lock:
            entries = list(self.points_history)
        after = query.get("starting_after")
        if after:
            ids = [e["query_id"] for e in entries]
            entries = entries[ids.index(after) + 1 :] if after in ids else []
        return self._json({"data": entries[:limit], "has_more": len(entries) > limit})


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Poe API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--key", default="poe-emulator-key")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each paid answer")
    parser.add_argument("--video-polls", type=int, default=2, help="polls until a video job finishes")
    parser.add_argument("--rate-limit", type=float, default=None, help="paid requests per second")
    args = parser.parse_args(argv)
    emulator = PoeEmulator(args.key, latency=args.latency, video_polls=args.video_polls, rate_limit_rps=args.rate_limit)
    # Ctrl-C and SIGTERM both stop the server cleanly, even when started in the background
    # (where a non-interactive shell would otherwise leave SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    emulator.start(args.host, args.port)
    print(f"Poe emulator on {emulator.base_url} (key: {args.key})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
