#!/usr/bin/env python3
"""Poe Universal Request Generator: one command for every Poe API mode.

    uv run scripts/poe_request_orchestrator.py --mode image --model nano-banana-2 --prompt "A fox"
    uv run scripts/poe_request_orchestrator.py --mode llm --model Claude-Sonnet-4.6 --prompt "Hi" --json

It turns (mode, model, prompt, params) into the right call to the Poe API, survives rate limits and
overload, and leaves a reproducible JSON record of exactly what was asked and what came back.
stdout carries only the result (llm: the answer; media: one URL or file per line; --json: the record);
everything else goes to stderr.

The file reads top to bottom in these sections:

    1. Public surface ..... version, exit codes, the error hierarchy, run_request()
    2. Input .............. --params / --param / @file, prompt, images, pre-flight checks
    3. Catalogue .......... GET /models, the disk cache, declared-parameter validation
    4. What to send ....... routing, parameter mapping, request building
    5. How to send it ..... transport, retries (tenacity), rate gate, streaming, video polling
    6. What came back ..... extraction of text and media, error classification
    7. What to keep ....... the record (atomic), downloads
    8. Terminal output .... rich on stderr; stdout carries only the result
    9. Batch .............. many requests, one connection pool, one rate gate
   10. Command line ....... the typer app, main()
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import difflib
import email.utils
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

# httpx imports its optional command-line client (click, pygments, rich.syntax) whenever those happen to be
# installed. This tool never uses it; declaring it absent saves about a third of start-up (benchmarks/).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402
import typer  # noqa: E402

if TYPE_CHECKING:  # imported where used, so that paths which never retry or print pay nothing for them
    import tenacity
    from rich.console import Console

# =====================================================================================================
# 1. Public surface
# =====================================================================================================

__version__ = "0.1.0"
TOOL_NAME = "poe-universal-generator"
RECORD_SCHEMA_VERSION = 1
DEFAULT_BASE_URL = "https://api.poe.com/v1"
MODES = ("llm", "image", "video", "audio")
ROUTES = ("auto", "direct", "chat")
APIS = ("chat", "responses")


class ExitCode(IntEnum):
    """Process exit codes: one per failure class, so scripts can branch on them."""

    OK = 0
    INTERNAL = 1  # a bug in this tool: please report it
    USAGE = 2  # bad input: nothing was sent
    AUTH = 3  # missing or rejected POE_API_KEY
    POINTS = 4  # out of points (402)
    REJECTED = 5  # Poe refused the request: bad parameter, unknown model or endpoint, moderation, too large
    RATE_LIMITED = 6  # still rate limited (429) after every retry
    SERVER = 7  # server error or overload after every retry; a failed video job; a malformed answer
    NETWORK = 8  # connection failure or timeout (including a video job past its deadline)
    NO_MEDIA = 9  # a media request answered with text only
    DOWNLOAD = 10  # an output could not be downloaded (expired or missing URL)
    BATCH_FAILED = 11  # a batch finished with at least one failed line
    CANCELLED = 130  # interrupted (Ctrl-C / SIGINT)


class PoeError(Exception):
    """Base of every error this tool reports; each subclass is one exit code."""

    exit_code = ExitCode.INTERNAL
    kind = "internal"

    def __init__(
        self, message: str, *, hint: str | None = None, status: int | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status
        self.error_type = error_type

    def __str__(self) -> str:
        return self.message

    def as_record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": self.status,
            "type": self.error_type,
            "message": self.message,
            "hint": self.hint,
            "exit_code": int(self.exit_code),
        }


class UsageError(PoeError):
    exit_code, kind = ExitCode.USAGE, "usage"


class ApiError(PoeError):
    """Poe answered with an error status (or an error object inside a 200)."""

    exit_code, kind = ExitCode.REJECTED, "rejected"


class AuthenticationError(ApiError):
    exit_code, kind = ExitCode.AUTH, "authentication"


class InsufficientPointsError(ApiError):
    exit_code, kind = ExitCode.POINTS, "insufficient_points"


class RequestRejectedError(ApiError):
    exit_code, kind = ExitCode.REJECTED, "rejected"


class NotFoundError(RequestRejectedError):
    kind = "not_found"


class RateLimitError(ApiError):
    exit_code, kind = ExitCode.RATE_LIMITED, "rate_limited"


class ServerError(ApiError):
    exit_code, kind = ExitCode.SERVER, "server"


class NetworkError(PoeError):
    exit_code, kind = ExitCode.NETWORK, "network"


class NoMediaError(PoeError):
    exit_code, kind = ExitCode.NO_MEDIA, "no_media"


class DownloadError(PoeError):
    exit_code, kind = ExitCode.DOWNLOAD, "download"


class Cancelled(PoeError):
    exit_code, kind = ExitCode.CANCELLED, "cancelled"


@dataclass
class RequestSpec:
    """What the user asked for, validated: the *what* of one request."""

    mode: str
    model: str
    prompt: str
    params: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    api: str = "chat"
    route: str = "auto"
    images: list[str] = field(default_factory=list)
    stream: bool = False
    validate: bool = True
    out: Path | None = None
    labels: dict[str, Any] = field(default_factory=dict)  # recorded only, never sent


@dataclass
class Settings:
    """How to reach Poe and how patient to be: shared by every request of a run."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str = ""
    timeout: float = 600.0
    connect_timeout: float = 15.0
    max_retries: int = 4
    max_retry_wait: float = 120.0
    retry_uncertain: bool = False
    poll_interval: float = 5.0
    poll_timeout: float = 1800.0
    cache_dir: Path | None = None
    refresh_models: bool = False
    download: bool = False
    track_points: bool = False
    dry_run: bool = False


def prepare_request(
    spec: RequestSpec, settings: Settings, client: httpx.Client, ui: Ui, catalogue: Catalogue | None = None
) -> Plan:
    """Everything that can be checked before a paid call: the catalogue, the mode, the route, the
    parameters, the images. Raises UsageError; sends nothing but the free catalogue GET."""
    catalogue = catalogue or load_catalogue(client, settings, ui)
    if not spec.mode:
        spec.mode = infer_mode(spec.model, catalogue)
    if spec.mode not in MODES:
        raise UsageError(f"--mode {spec.mode!r} is not a mode; choose one of: {', '.join(MODES)}")
    if catalogue and catalogue.find(spec.model) is None:
        ui.warn(f"model {spec.model!r} is not in the catalogue; sending anyway" + _did_you_mean(spec.model, catalogue))
    plan = plan_request(spec, settings.base_url, catalogue)
    try:  # an argument with bytes that are not UTF-8 arrives as lone surrogates, which no request can carry
        json.dumps([plan.request.body, spec.labels], ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            "the prompt, --system, a parameter or a label holds bytes that are not UTF-8; pass UTF-8 text"
        ) from None
    return plan


def run_request(
    spec: RequestSpec,
    plan: Plan,
    settings: Settings,
    *,
    client: httpx.Client | None = None,
    ui: Ui | None = None,
    gate: RateGate | None = None,
) -> Record:
    """Send one prepared request end to end and return its record (written to ``spec.out``).

    Never raises PoeError: a failure is a record with ``ok: false`` and ``error`` filled in. On
    KeyboardInterrupt the record is marked cancelled and written, then the interrupt propagates.
    """
    ui = ui or Ui()
    own_client = client is None
    client = client or make_client(settings)
    record = Record.start(spec, settings)
    writer = RecordWriter(spec.out) if spec.out else None
    record.path = spec.out
    try:
        _run(spec, plan, settings, client, ui, gate or RateGate(), record, writer)
    except PoeError as exc:
        record.fail(exc)
    except KeyboardInterrupt:
        record.fail(Cancelled("interrupted (Ctrl-C); a request already sent may still be charged"))
        _save(record, writer, settings)
        raise
    except Exception as exc:  # a bug: still keep the record of what was sent
        record.fail(PoeError(f"internal error {type(exc).__name__}: {exc}", hint="Please report this."))
        _save(record, writer, settings)
        raise
    finally:
        if own_client:
            client.close()
    try:
        _save(record, writer, settings)
    except OSError as exc:  # disk full, folder gone: the answer must still reach the user
        record.save_error = (
            f"could not write the record {spec.out} ({exc.strerror or exc}); only its pending copy remains"
        )
    record.kept_previous = writer.kept_previous if writer else None
    return record


def _run(
    spec: RequestSpec,
    plan: Plan,
    settings: Settings,
    client: httpx.Client,
    ui: Ui,
    gate: RateGate,
    record: Record,
    writer: RecordWriter | None,
) -> None:
    record.set_plan(plan)
    if settings.track_points:
        record.data["points"] = {"before": fetch_balance(client, settings), "after": None, "spent": None}
    _save(record, writer, settings, fsync=False)  # a pending record exists before any paid call
    sender = Sender(client, settings, ui, gate, record)
    llm = spec.mode == "llm"
    waiting = contextlib.nullcontext() if plan.request.stream else ui.status(f"{spec.model} via {plan.route.endpoint}")
    with waiting:
        response = sender.send(plan.request, paid=True, llm=llm, stream=plan.request.stream or not llm)
        if response.status_code in (404, 405) and plan.fallback is not None:
            ui.warn(
                f"{plan.request.url} answered {response.status_code} (nothing charged); falling back to the chat route"
            )
            response.close()
            plan = plan.fallback
            record.set_plan(plan, fell_back=True)
            response = sender.send(plan.request, paid=True, llm=llm, stream=not llm)
        result = sender.finish(response, plan)
    if result.job_id:
        poll_video_job(sender, plan, result, ui)
    record.set_result(result)
    save_inline_outputs(record, writer.path if writer else None)
    if not llm and not result.outputs:
        raise NoMediaError(
            f"{spec.model} answered without media: {_clip(result.text or '(empty answer)')}",
            hint="The bot replied with text only (a refusal or a question): rephrase the prompt or try another model.",
        )
    if settings.download:
        _save(record, writer, settings)
        download_outputs(record, writer.path if writer else None, client, settings, ui)
    points = record.data.get("points")
    if points:
        points["after"] = fetch_balance(client, settings)
        if points["before"] is not None and points["after"] is not None:
            points["spent"] = points["before"] - points["after"]
    record.succeed()


def infer_mode(model_id: str, catalogue: Catalogue | None) -> str:
    """--mode left out: take it from the catalogue's output modalities."""
    model = catalogue.find(model_id) if catalogue else None
    if model is None:
        raise UsageError(
            f"--mode is missing and {model_id!r} is not in the catalogue to infer it from; "
            f"pass --mode ({', '.join(MODES)})"
        )
    return model.modes[0]


def _save(record: Record, writer: RecordWriter | None, settings: Settings, *, fsync: bool = True) -> None:
    """Write the record atomically; the final write is also fsynced, the pending one need not be."""
    if writer is not None:
        writer.write(record.to_json(settings.api_key), fsync=fsync)


# =====================================================================================================
# 2. Input: params, prompt, images, pre-flight checks
# =====================================================================================================

MAX_IMAGE_BYTES = 20 * 1024 * 1024
IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


def parse_params(params: str | None, param_pairs: list[str] | None = None) -> dict[str, Any]:
    """Merge ``--params`` (a JSON object or ``@file.json``) and repeatable ``--param key=value``."""
    merged: dict[str, Any] = {}
    if params:
        text, source = params, "--params"
        if params.startswith("@"):
            path = Path(params[1:])
            source = f"--params @{path}"
            try:
                text = path.read_text(encoding="utf-8-sig")
            except OSError as exc:
                raise UsageError(
                    f"{source}: cannot read the file ({exc.strerror or exc}); give an existing JSON file after @"
                ) from None
            except UnicodeDecodeError:
                raise UsageError(f"{source}: the file is not UTF-8 text; save it as UTF-8 JSON") from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                'give an object such as \'{"aspect_ratio":"16:9"}\' or use --param key=value'
            ) from None
        if not isinstance(value, dict):
            raise UsageError(
                f'{source} must be a JSON object, not {type(value).__name__}; for example \'{{"aspect_ratio":"16:9"}}\''
            )
        if not json_compliant(value):
            raise UsageError(f"{source} holds NaN, Infinity or a number too large for JSON; write a finite number")
        merged.update(value)
    merged.update(parse_pairs(param_pairs, "--param", "aspect_ratio=16:9"))
    return merged


def parse_pairs(pairs: list[str] | None, option: str = "--param", example: str = "aspect_ratio=16:9") -> dict[str, Any]:
    """Repeatable ``key=value`` options; the value is read as JSON when it parses, else as a string."""
    parsed: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} {pair!r} is not key=value; write it as {option} {example}")
        parsed[key.strip()] = _param_value(raw)
    return parsed


def _param_value(raw: str) -> Any:
    """A --param value: JSON when it parses (6, true, [1,2], "x"), else the plain string."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if json_compliant(value) else raw  # NaN, Infinity, 1e999: not JSON, so the plain string


def json_compliant(value: Any) -> bool:
    """False when the value holds NaN, Infinity or a float overflow (1e999): Python's json reads them, but no
    request body may carry them."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def read_prompt(prompt: str | None, stdin: Any = None) -> str:
    """``--prompt -`` (or no --prompt with piped stdin) reads the prompt from stdin, exactly as given."""
    stdin = stdin if stdin is not None else sys.stdin
    if prompt == "-" or (prompt is None and stdin is not None and not stdin.isatty()):
        try:
            text = stdin.read()
        except UnicodeDecodeError:
            raise UsageError("the prompt on stdin is not UTF-8 text; convert it to UTF-8 first") from None
        if not text.strip():
            raise UsageError("the prompt on stdin is empty; pipe some text in, or pass --prompt TEXT")
        return text  # exactly as read, trailing newline included: the record must reproduce it
    if prompt is None or not prompt.strip():
        raise UsageError("no prompt given; pass --prompt TEXT, or --prompt - to read it from stdin")
    return prompt


@dataclass
class ImageInput:
    """One --image: a local file (sent inline as base64) or a URL (sent as is)."""

    ref: str
    mime: str
    url: str | None = None
    data: bytes | None = None

    @property
    def b64(self) -> str:
        return base64.b64encode(self.data or b"").decode("ascii")

    @property
    def data_url(self) -> str:
        return self.url or f"data:{self.mime};base64,{self.b64}"

    def describe(self) -> dict[str, Any]:
        if self.data is None:
            return {"source": self.ref, "url": self.url}
        return {
            "source": self.ref,
            "mime": self.mime,
            "bytes": len(self.data),
            "sha256": hashlib.sha256(self.data).hexdigest(),
        }


def load_image(ref: str) -> ImageInput:
    """Check an --image before anything is sent: it exists, is small enough, and is an image."""
    if re.match(r"^https?://", ref, re.I):
        return ImageInput(ref=ref, mime="", url=ref)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise UsageError(f"--image {ref}: no such file; give an existing image file or an https URL")
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise UsageError(
            f"--image {ref}: {size / 1e6:.1f} MB is over the {MAX_IMAGE_BYTES // 2**20} MB limit; resize or compress it"
        )
    data = path.read_bytes()
    mime = sniff_type(data[:16])
    if not mime.startswith("image/"):
        raise UsageError(f"--image {ref}: not a PNG, JPEG, GIF or WebP image")
    return ImageInput(ref=ref, mime=mime, data=data)


def sniff_type(head: bytes) -> str:
    """The content type told by a file's first bytes ('' when unknown)."""
    for magic, mime in IMAGE_MAGIC.items():
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    return ""


def default_out_path(mode: str, now: datetime | None = None) -> Path:
    """outputs/<mode>-<UTC time>-<short id>.json: unique and sortable."""
    now = now or datetime.now(UTC)
    return Path("outputs") / f"{mode}-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}.json"


def check_out_path(out: Path) -> Path:
    """Create the record's folder and prove it is writable, before anything is sent."""
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file path such as {out / 'result.json'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".write-check-", delete=True):
            pass
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose another path") from None
    return out


def require_key(env: Mapping[str, str] | None = None) -> str:
    key = (env if env is not None else os.environ).get("POE_API_KEY", "").strip()
    if not key:
        raise AuthenticationError(
            "POE_API_KEY is not set", hint="Create a key at https://poe.com/api/keys and export POE_API_KEY=..."
        )
    if not re.fullmatch(r"[\x21-\x7e]+", key):  # a paste gone wrong; httpx would quote it whole in an error
        raise AuthenticationError(
            "POE_API_KEY holds a space, a line break or a character outside ASCII, so it cannot be sent",
            hint="Copy the key again from https://poe.com/api/keys and export POE_API_KEY=...",
        )
    return key


# =====================================================================================================
# 3. Catalogue: GET /models, cached on disk for a day
# =====================================================================================================

CATALOGUE_TTL_S = 24 * 3600
MODE_ENDPOINTS = {"image": "/images", "video": "/videos", "audio": "/audio"}
# Fields any OpenAI-style request may carry: never refused by declared-parameter validation.
STANDARD_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "stream_options",
        "response_format",
        "presence_penalty",
        "frequency_penalty",
        "user",
        "logprobs",
        "top_logprobs",
        "metadata",
        "reasoning",
        "reasoning_effort",
        "text",
        "previous_response_id",
        "instructions",
        "truncation",
        "store",
        "include",
        "n",
        "seed",
    }
)
# Fields the direct media routes define themselves (OpenAI Images / Videos shapes).
DIRECT_FIELDS = {
    "video": frozenset({"seconds", "size", "input_image"}),
    "image": frozenset({"size", "quality", "n", "response_format", "background", "output_format"}),
    "audio": frozenset({"voice", "format", "response_format"}),
}


@dataclass
class ModelInfo:
    """One catalogue entry, reduced to what routing and validation need."""

    id: str
    output_modalities: list[str]
    supported_endpoints: list[str]
    parameters: dict[str, dict[str, Any]] | None  # None: the catalogue declares nothing (no validation)
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ModelInfo:
        arch = entry.get("architecture") or {}
        params = entry.get("parameters")
        declared = None
        if isinstance(params, list):
            declared = {p["name"]: p for p in params if isinstance(p, dict) and isinstance(p.get("name"), str)}
        return cls(
            id=str(entry.get("id", "")),
            output_modalities=[str(m).lower() for m in arch.get("output_modalities") or []],
            supported_endpoints=[str(e) for e in entry.get("supported_endpoints") or []],
            parameters=declared,
            raw=entry,
        )

    @property
    def modes(self) -> list[str]:
        modes: list[str] = [m for m in ("image", "video", "audio") if m in self.output_modalities]
        return modes or ["llm"]

    def lists_endpoint(self, endpoint: str) -> bool:
        """True when supported_endpoints names the endpoint ('/v1/images', 'images', ... all match)."""
        want = endpoint.strip("/").lower()
        return any(e.lower().strip("/").removeprefix("v1/") == want for e in self.supported_endpoints)

    def routes(self) -> list[str]:
        direct = [e for m, e in MODE_ENDPOINTS.items() if self.lists_endpoint(e) and m in self.modes]
        return ["direct " + e for e in direct] + ["chat"]


@dataclass
class Catalogue:
    models: dict[str, ModelInfo]  # keyed by lower-case id
    fetched_at: float
    source: str  # "network" or "cache"

    def find(self, model_id: str) -> ModelInfo | None:
        return self.models.get(model_id.lower())

    def close_matches(self, model_id: str, n: int = 3) -> list[str]:
        return difflib.get_close_matches(model_id.lower(), list(self.models), n=n, cutoff=0.5)


def catalogue_note(catalogue: Catalogue | None) -> str:
    return "catalogue unavailable" if catalogue is None else f"catalogue from {catalogue.source}"


def default_cache_dir() -> Path:
    if env := os.environ.get("POE_CACHE_DIR"):
        return Path(env)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / TOOL_NAME


def _catalogue_cache_file(settings: Settings) -> Path:
    digest = hashlib.sha256(settings.base_url.rstrip("/").encode()).hexdigest()[:12]
    return (settings.cache_dir or default_cache_dir()) / f"models-{digest}.json"


def load_catalogue(client: httpx.Client, settings: Settings, ui: Ui) -> Catalogue | None:
    """The model catalogue from the disk cache (under a day old) or GET /models; None if unreadable."""
    cache = _catalogue_cache_file(settings)
    if not settings.refresh_models:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if time.time() - float(cached["fetched_at"]) < CATALOGUE_TTL_S:
                return _catalogue_from(cached["data"], float(cached["fetched_at"]), "cache")
    try:
        response = client.get(_url(settings, "/models"), timeout=min(settings.timeout, 30.0))
        response.raise_for_status()
        data = response.json()["data"]
        if not isinstance(data, list):
            raise ValueError("data is not a list")
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        ui.note(f"model catalogue unavailable ({type(exc).__name__}); routing without it")
        return None
    now = time.time()
    with contextlib.suppress(OSError):
        atomic_write_text(cache, json.dumps({"fetched_at": now, "base_url": settings.base_url, "data": data}))
    return _catalogue_from(data, now, "network")


def _catalogue_from(data: list[Any], fetched_at: float, source: str) -> Catalogue:
    models = [ModelInfo.from_json(e) for e in data if isinstance(e, dict) and e.get("id")]
    return Catalogue({m.id.lower(): m for m in models}, fetched_at, source)


def _did_you_mean(model_id: str, catalogue: Catalogue | None) -> str:
    matches = catalogue.close_matches(model_id) if catalogue else []
    return f" (did you mean {', '.join(matches)}?)" if matches else ""


def validate_params(params: dict[str, Any], model: ModelInfo, allowed_extra: frozenset[str]) -> dict[str, Any]:
    """Refuse parameters the model does not declare; coerce declared ones to their schema type."""
    declared = model.parameters
    if declared is None:
        return params
    checked: dict[str, Any] = {}
    for name, value in params.items():
        if name not in declared and (name in STANDARD_FIELDS or name in allowed_extra):
            checked[name] = value
            continue
        if name not in declared:
            allowed = ", ".join(sorted(declared)) or "none"
            raise UsageError(
                f"{model.id} does not declare a parameter {name!r} (it accepts: {allowed}); "
                "fix the name, or pass --no-validate to send it anyway"
            )
        checked[name] = _coerce(name, value, declared[name].get("schema") or {}, model.id)
    return checked


def _coerce(name: str, value: Any, schema: dict[str, Any], model_id: str) -> Any:
    kind = schema.get("type")
    if kind == "string" and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    elif kind == "integer" and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    elif kind == "number" and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    elif kind == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and value not in enum:
        allowed = ", ".join(str(v) for v in enum)
        raise UsageError(
            f"{model_id}: {name}={value!r} is not allowed (choose one of: {allowed}); "
            "or pass --no-validate to send it anyway"
        )
    return value


# =====================================================================================================
# 4. What to send: routing, parameter mapping, request building
# =====================================================================================================

RESOLUTION_SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}


@dataclass(frozen=True)
class Route:
    name: str  # "direct" | "chat" | "responses"
    endpoint: str  # path under the base URL, e.g. "/images"
    reason: str


@dataclass
class PreparedRequest:
    """Exactly what goes on the wire (the key is added by the Sender, never stored here)."""

    method: str
    url: str
    body: dict[str, Any] | None
    stream: bool = False

    def for_record(self, api_key_present: bool = True) -> dict[str, Any]:
        headers = {
            "Authorization": "Bearer ***" if api_key_present else "Bearer <POE_API_KEY unset>",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        return {"method": self.method, "url": self.url, "headers": headers, "body": _shrink_data_urls(self.body)}


@dataclass
class Plan:
    """A routed request: the route taken, what will be sent, and the chat fallback if it exists."""

    route: Route
    request: PreparedRequest
    sent_params: dict[str, Any]
    notes: list[str]
    inputs: list[ImageInput]
    fallback: Plan | None = None


def plan_request(spec: RequestSpec, base_url: str, catalogue: Catalogue | None) -> Plan:
    """Choose the route and build the request for it (and its chat fallback). Raises UsageError for
    anything that must be fixed before sending: undeclared parameters, unreadable images."""
    images = [load_image(ref) for ref in spec.images]
    model = catalogue.find(spec.model) if catalogue else None
    route = choose_route(spec, model, catalogue is not None, bool(images), catalogue_note(catalogue))
    plan = _build(spec, route, model, images, base_url)
    if route.name == "direct" and spec.route == "auto":
        chat = Route("chat", "/chat/completions", f"fallback: {route.endpoint} answered 404/405")
        plan.fallback = _build(spec, chat, model, images, base_url)
    return plan


def choose_route(
    spec: RequestSpec, model: ModelInfo | None, catalogue_ok: bool, has_images: bool, source: str = ""
) -> Route:
    if spec.mode == "llm":
        if spec.api == "responses":
            return Route("responses", "/responses", "llm mode with --api responses")
        return Route("chat", "/chat/completions", "llm mode with --api chat")
    endpoint = MODE_ENDPOINTS[spec.mode]
    if has_images and spec.mode in ("image", "audio"):
        if spec.route == "direct":
            raise UsageError(f"--image needs the chat route in {spec.mode} mode; drop --route direct")
        return Route("chat", "/chat/completions", "image input travels as chat content parts")
    if spec.route == "direct":
        return Route("direct", endpoint, "--route direct")
    if spec.route == "chat":
        return Route("chat", "/chat/completions", "--route chat")
    if not catalogue_ok:
        return Route("direct", endpoint, "catalogue unavailable: trying the direct route first")
    if model is None:
        return Route("chat", "/chat/completions", f"{spec.model} is not in the catalogue ({source})")
    if model.lists_endpoint(endpoint):
        return Route("direct", endpoint, f"{model.id} lists {endpoint} in supported_endpoints ({source})")
    return Route("chat", "/chat/completions", f"{model.id} does not list {endpoint} in supported_endpoints ({source})")


# Body fields the tool fills from its own options: a parameter may not silently replace them.
RESERVED_PARAMS = {"model": "--model", "messages": "--prompt", "prompt": "--prompt", "input": "--prompt",
                   "stream": "--stream"}  # fmt: skip


def _build(spec: RequestSpec, route: Route, model: ModelInfo | None, images: list[ImageInput], base_url: str) -> Plan:
    for name in spec.params:
        if name in RESERVED_PARAMS:
            raise UsageError(f"parameter {name!r} would replace what {RESERVED_PARAMS[name]} sets; use "
                             f"{RESERVED_PARAMS[name]} instead")  # fmt: skip
    params, notes = route_params(spec.mode, route.name, spec.params, model, validate=spec.validate)
    url = base_url.rstrip("/") + route.endpoint
    if route.name == "responses":
        body = build_responses_body(spec, params, images)
    elif route.name == "chat":
        body = build_chat_body(spec, params, images)
    else:
        body = {"model": spec.model, "prompt": spec.prompt, **params}
        if spec.mode == "video" and images:
            if images[0].data is None:
                raise UsageError(
                    "--image with a URL cannot go to the direct video route (it needs the file); "
                    "download it first or pass --route chat"
                )
            body["input_image"] = images[0].b64
    stream = spec.stream and spec.mode == "llm"
    return Plan(route, PreparedRequest("POST", url, body, stream), params, notes, images)


def build_chat_body(spec: RequestSpec, params: dict[str, Any], images: list[ImageInput]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if spec.system and spec.mode == "llm":
        messages.append({"role": "system", "content": spec.system})
    content: Any = spec.prompt
    if images:
        content = [{"type": "text", "text": spec.prompt}] + [
            {"type": "image_url", "image_url": {"url": img.data_url}} for img in images
        ]
    messages.append({"role": "user", "content": content})
    stream = spec.stream and spec.mode == "llm"  # media calls always stream=false
    body: dict[str, Any] = {"model": spec.model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    body.update(params)
    return body


def build_responses_body(spec: RequestSpec, params: dict[str, Any], images: list[ImageInput]) -> dict[str, Any]:
    items: Any = spec.prompt
    if images:
        parts = [{"type": "input_text", "text": spec.prompt}] + [
            {"type": "input_image", "image_url": img.data_url} for img in images
        ]
        items = [{"role": "user", "content": parts}]
    body: dict[str, Any] = {"model": spec.model, "input": items, "stream": spec.stream}
    if spec.system:
        body["instructions"] = spec.system
    body.update(params)
    return body


def _shrink_data_urls(value: Any) -> Any:
    """Inline base64 images are summarised in the record (size and hash), not copied whole."""
    if isinstance(value, dict):
        return {k: _shrink_data_urls(v) if k != "input_image" else _summarise_b64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shrink_data_urls(v) for v in value]
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value[:100]:
        head, b64 = value.split(",", 1)
        return f"{head},<{_summarise_b64(b64)}>"
    return value


def _summarise_b64(b64: Any) -> Any:
    if not isinstance(b64, str):
        return b64
    raw = base64.b64decode(b64, validate=False)
    return f"base64 of {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()}"


# --- Parameter mapping -------------------------------------------------------------------------------
# One table says what each common parameter becomes on each route; route_params() implements it, the tests
# check every row, and references/parameter-mapping.md is generated from it (--parameter-mapping).


@dataclass(frozen=True)
class MappingRow:
    mode: str
    given: dict[str, Any]
    direct: dict[str, Any]  # direct route (llm: the Responses API)
    chat: dict[str, Any]  # chat route (llm: chat completions)
    model: str | None = None  # the model whose declared parameters the row assumes
    note: str = ""


# fmt: off
PARAMETER_MAPPING: tuple[MappingRow, ...] = (
    MappingRow("video", {"duration": "6s"}, {"seconds": 6}, {"duration": "6"},
               note="'6s', '6' and 6 all work"),
    MappingRow("video", {"seconds": 8}, {"seconds": 8}, {"duration": "8"}),
    MappingRow("video", {"duration": "6s", "resolution": "1080p"},
               {"seconds": 6, "size": "1920x1080"}, {"duration": "6", "resolution": "1080p"},
               note="size is landscape unless aspect_ratio says 9:16"),
    MappingRow("video", {"resolution": "720p", "aspect_ratio": "9:16"},
               {"size": "720x1280"}, {"resolution": "720p", "aspect_ratio": "9:16"}),
    MappingRow("video", {"aspect_ratio": "16:9"}, {"size": "1280x720"}, {"aspect_ratio": "16:9"},
               note="720p when no resolution is given"),
    MappingRow("video", {"size": "1920x1080"}, {"size": "1920x1080"}, {"resolution": "1080p", "aspect_ratio": "16:9"},
               model="veo-3.1", note="kept as size on chat when the model declares size (sora-2)"),
    MappingRow("video", {"negative_prompt": "rain"}, {"no": "rain"}, {"no": "rain"},
               model="veo-3.1", note="renamed only when the model declares 'no'"),
    MappingRow("image", {"aspect_ratio": "3:2"}, {"aspect": "3:2"}, {"aspect": "3:2"},
               model="gpt-image-1",
               note="renamed to 'aspect' when the model declares 'aspect' but not 'aspect_ratio'"),
    MappingRow("image", {"aspect": "16:9"}, {"aspect_ratio": "16:9"}, {"aspect_ratio": "16:9"},
               model="nano-banana-2", note="and back, for models that declare 'aspect_ratio'"),
    MappingRow("video", {"seed": 42}, {"seed": "42"}, {"seed": "42"},
               model="veo-3.1", note="converted to the declared type (veo-3.1 declares a string)"),
    MappingRow("llm", {"max_tokens": 200}, {"max_output_tokens": 200}, {"max_tokens": 200},
               note="llm: 'direct' is the Responses API (--api responses)"),
)
# fmt: on


def route_params(
    mode: str, route: str, params: dict[str, Any], model: ModelInfo | None, *, validate: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """The parameters exactly as they will be sent on this route: mapped, then checked against the catalogue."""
    mapped, notes = map_params(mode, route, params, model)
    if validate and model is not None:
        extra = DIRECT_FIELDS.get(mode, frozenset()) if route == "direct" else frozenset()
        mapped = validate_params(mapped, model, extra)
    return mapped, notes


def map_params(mode: str, route: str, params: dict[str, Any], model: ModelInfo | None) -> tuple[dict, list[str]]:
    """Translate the user's common parameters into the names and types each route expects."""
    out = dict(params)
    notes: list[str] = []
    declared = (model.parameters or {}) if model else {}
    if mode == "video":
        out = _map_video(out, route, declared, notes)
    if mode == "image":
        for src, dst in (("aspect_ratio", "aspect"), ("aspect", "aspect_ratio")):
            if src in out and dst in declared and src not in declared and dst not in out:
                out[dst] = out.pop(src)
                notes.append(f"{src} -> {dst} ({model.id if model else ''} declares {dst})")
    if mode == "llm" and route == "responses" and "max_tokens" in out and "max_output_tokens" not in out:
        out["max_output_tokens"] = out.pop("max_tokens")
        notes.append("max_tokens -> max_output_tokens (Responses API)")
    if route != "direct":
        for name, value in list(out.items()):
            schema = (declared.get(name) or {}).get("schema") or {}
            if schema.get("type") == "string" and isinstance(value, int | float) and not isinstance(value, bool):
                out[name] = str(value)
    return out, notes


def _seconds(value: Any) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds)?\s*", str(value), re.I)
    if not match:
        raise UsageError(f'duration {value!r} is not a number of seconds; write it as 6 or "6s"')
    return round(float(match.group(1)))


def _map_video(p: dict[str, Any], route: str, declared: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    duration = p.pop("duration", None)
    seconds = p.pop("seconds", None)
    given = duration if duration is not None else seconds
    length = _seconds(given) if given is not None else None
    resolution = p.get("resolution")
    aspect = p.get("aspect_ratio")
    if route == "direct":
        if length is not None:
            p["seconds"] = length
        if "size" not in p and (resolution or aspect):
            p.pop("resolution", None)
            p.pop("aspect_ratio", None)
            p["size"] = _size_for(resolution or "720p", aspect or "16:9")
            notes.append(f"resolution/aspect_ratio -> size {p['size']}")
    else:
        if length is not None:
            p["duration"] = str(length)
        if "size" in p and "size" not in declared:
            width, _, height = str(p.pop("size")).partition("x")
            if width.isdigit() and height.isdigit():
                p.setdefault("resolution", f"{min(int(width), int(height))}p")
                p.setdefault("aspect_ratio", "16:9" if int(width) >= int(height) else "9:16")
                notes.append("size -> resolution + aspect_ratio")
    if "negative_prompt" in p and "no" in declared:
        p["no"] = p.pop("negative_prompt")
        notes.append("negative_prompt -> no")
    return p


def _size_for(resolution: str, aspect: str) -> str:
    wide, tall = RESOLUTION_SIZES.get(str(resolution).lower(), RESOLUTION_SIZES["720p"])
    w, _, h = str(aspect).partition(":")
    portrait = w.isdigit() and h.isdigit() and int(w) < int(h)
    return f"{tall}x{wide}" if portrait else f"{wide}x{tall}"


def render_parameter_mapping() -> str:
    """The Markdown table of PARAMETER_MAPPING (references/parameter-mapping.md embeds it)."""

    def show(d: dict[str, Any]) -> str:
        return "`" + json.dumps(d, ensure_ascii=False) + "`"

    lines = [
        "| mode | you give | direct route (llm: Responses API) | chat route | assumes model | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in PARAMETER_MAPPING:
        lines.append(
            f"| {row.mode} | {show(row.given)} | {show(row.direct)} | {show(row.chat)} | "
            f"{row.model or 'any'} | {row.note} |"
        )
    return "\n".join(lines) + "\n"


# =====================================================================================================
# 5. How to send it: transport, retries, rate gate, streaming, video polling
# =====================================================================================================

USER_AGENT = f"{TOOL_NAME}/{__version__}"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
MAYBE_SENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 8.0


def make_client(settings: Settings, pool: int = 10) -> httpx.Client:
    timeout = httpx.Timeout(settings.timeout, connect=settings.connect_timeout)
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    return httpx.Client(timeout=timeout, limits=limits, headers={"User-Agent": USER_AGENT}, follow_redirects=False)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds Poe asks us to wait: retry-after-ms, Retry-After (seconds or HTTP date), x-ratelimit-reset."""
    lower = {k.lower(): v for k, v in headers.items()}
    with contextlib.suppress(ValueError, TypeError):
        if "retry-after-ms" in lower:
            return max(0.0, float(lower["retry-after-ms"]) / 1000)
    value = lower.get("retry-after")
    if value:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value))
        parsed = email.utils.parsedate_tz(value)
        if parsed is not None:
            return max(0.0, email.utils.mktime_tz(parsed) - (now if now is not None else time.time()))
    reset = lower.get("x-ratelimit-reset-requests")
    return _duration_s(reset) if reset else None


def _duration_s(text: str) -> float | None:
    """'7', '7.5', '1s', '6m0s', '250ms' -> seconds."""
    with contextlib.suppress(ValueError):
        return max(0.0, float(text))
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


class RetryableFailure(Exception):
    """One failed try that the retry policy may repeat (a status from RETRY_STATUSES or a network error)."""

    def __init__(
        self,
        reason: str,
        *,
        response: httpx.Response | None = None,
        error: Exception | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response
        self.error = error
        self.retry_after = retry_after
        self.too_long = False


class RateGate:
    """One gate for every worker of a run. A 429 pauses them all for its Retry-After; afterwards requests
    resume gradually: one in flight, the allowance doubling with each success, and request starts spaced
    by an interval that doubles with each 429 and shrinks by a tenth with each success (so a batch settles
    near the rate Poe allows instead of provoking a 429 per request)."""

    MIN_INTERVAL_S = 0.05
    MAX_INTERVAL_S = 5.0

    def __init__(self, concurrency: int = 1) -> None:
        self.concurrency = max(1, concurrency)
        self._cond = threading.Condition()
        self._paused_until = 0.0
        self._interval = 0.0
        self._next_start = 0.0
        self._allowance = self.concurrency
        self._in_flight = 0
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        """A 429: hold every worker for `seconds`, then restart slowly."""
        with self._cond:
            until = time.monotonic() + seconds
            if until > self._paused_until:
                self._paused_until = until
                self.pauses += 1
            self._allowance = 1
            self._interval = min(self.MAX_INTERVAL_S, max(self.MIN_INTERVAL_S, self._interval * 2))

    def succeeded(self) -> None:
        with self._cond:
            self._allowance = min(self.concurrency, self._allowance * 2)
            self._interval = self._interval * 0.9 if self._interval > self.MIN_INTERVAL_S / 2 else 0.0
            self._cond.notify_all()

    def waiting_s(self) -> float:
        return max(0.0, self._paused_until - time.monotonic())

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            while True:
                now = time.monotonic()
                wait = max(self._paused_until, self._next_start) - now
                if wait > 0:
                    self._cond.wait(timeout=wait)
                elif self._in_flight < self._allowance:
                    break
                else:
                    self._cond.wait(timeout=0.5)
            self._in_flight += 1
            self._next_start = time.monotonic() + self._interval
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()


def wait_for_retry(retry_state: tenacity.RetryCallState) -> float:
    """The wait before the next try: the server's Retry-After when it gave one, else the openai-python
    backoff, min(0.5 * 2^n, 8) s shortened by up to 25 % random jitter."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    if isinstance(exc, RetryableFailure) and exc.retry_after is not None:
        return exc.retry_after
    backoff = min(BACKOFF_INITIAL_S * 2 ** (retry_state.attempt_number - 1), BACKOFF_MAX_S)
    return backoff * (1 - 0.25 * random.random())


@dataclass
class SendResult:
    """What came back from one request, reduced: the text, the outputs, the job (video), the usage."""

    status: int
    body: Any
    text: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    job_id: str | None = None
    job: dict[str, Any] | None = None


class Sender:
    """Sends requests with the retry policy, logging every try into the record."""

    def __init__(
        self,
        client: httpx.Client,
        settings: Settings,
        ui: Ui,
        gate: RateGate,
        record: Record,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.settings = settings
        self.ui = ui
        self.gate = gate
        self.record = record
        self.sleep = sleep

    # -- one request, retried -----------------------------------------------------------------------
    def send(self, req: PreparedRequest, *, paid: bool, llm: bool, stream: bool = False) -> httpx.Response:
        """Send with retries. Returns the final response (2xx, or 404/405 for the fallback decision);
        raises a PoeError subclass for anything else. With stream=True it returns once the headers are in
        (an SSE answer or a binary media body is then read by finish())."""
        import tenacity

        retry_uncertain = llm or not paid or self.settings.retry_uncertain
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.settings.max_retries + 1),
            wait=wait_for_retry,
            retry=tenacity.retry_if_exception(self._should_retry),
            before_sleep=self._before_sleep,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._try_once(req, retry_uncertain, stream)
        except RetryableFailure as failure:
            raise self._exhausted(failure, req, retrying.statistics.get("attempt_number", 1)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _try_once(self, req: PreparedRequest, retry_uncertain: bool, stream: bool) -> httpx.Response:
        started = time.monotonic()
        entry: dict[str, Any] = {
            "n": len(self.record.attempts) + 1,
            "method": req.method,
            "url": req.url,
            "status": None,
            "error": None,
            "retry_after_s": None,
            "wait_s": None,
        }
        self.record.attempts.append(entry)
        headers = {"Authorization": f"Bearer {self.settings.api_key}"}
        try:
            with self.gate.slot():
                self.ui.debug(f"{req.method} {req.url}")
                request = self.client.build_request(req.method, req.url, json=req.body, headers=headers)
                response = self.client.send(request, stream=stream)
                if stream and not req.stream and not is_binary_media(response):
                    response.read()  # a JSON answer is read here, so a cut body counts as a lost connection
        except NOT_SENT_ERRORS as exc:
            entry.update(error=f"{type(exc).__name__}: not sent", elapsed_s=_since(started))
            raise RetryableFailure(f"could not connect ({type(exc).__name__})", error=exc) from None
        except MAYBE_SENT_ERRORS as exc:
            entry.update(error=f"{type(exc).__name__}: may have reached Poe", elapsed_s=_since(started))
            if retry_uncertain:
                raise RetryableFailure(f"connection lost after sending ({type(exc).__name__})", error=exc) from None
            raise NetworkError(
                f"the connection was lost after the request was sent ({type(exc).__name__}); not retried "
                "because Poe may already have charged for it",
                hint="Check your Poe usage before retrying, or pass --retry-uncertain to retry such failures.",
            ) from None
        entry.update(status=response.status_code, elapsed_s=_since(started))
        if response.status_code < 400:
            self.gate.succeeded()
            return response
        if response.status_code in (404, 405):
            return response
        if stream:
            response.read()
        retry_after = parse_retry_after(response.headers) if response.status_code in (429, 503, 529) else None
        entry["retry_after_s"] = retry_after
        if response.status_code in RETRY_STATUSES:
            raise RetryableFailure(f"HTTP {response.status_code}", response=response, retry_after=retry_after)
        raise error_from_response(response, self.record.data.get("model", ""))

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, RetryableFailure):
            return False
        if exc.retry_after is not None and exc.retry_after > self.settings.max_retry_wait:
            exc.too_long = True
            return False
        return True

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        exc = state.outcome.exception() if state.outcome else None
        self.record.attempts[-1]["wait_s"] = round(wait, 3)
        reason = exc.reason if isinstance(exc, RetryableFailure) else str(exc)
        if isinstance(exc, RetryableFailure) and exc.response is not None and exc.response.status_code == 429:
            self.gate.pause(wait)
        self.ui.retry(f"{reason}; retry {state.attempt_number} of {self.settings.max_retries} in {wait:.1f} s")

    def _exhausted(self, failure: RetryableFailure, req: PreparedRequest, tries: int) -> PoeError:
        model = self.record.data.get("model", "")
        if failure.response is not None:
            self.record.set_response(failure.response)
            error = error_from_response(failure.response, model)
            if failure.too_long:
                error.message = (
                    f"Poe asked to wait {failure.retry_after:.0f} s (HTTP {failure.response.status_code}), "
                    f"longer than --max-retry-wait {self.settings.max_retry_wait:.0f} s; not waiting"
                )
                error.hint = "Try again later, or raise --max-retry-wait."
            else:
                error.message += f" (after {tries} tries)"
            return error
        return NetworkError(
            f"{failure.reason}: {req.url} (after {tries} tries)",
            hint="Check the network and --base-url, then try again.",
        )

    # -- reading the answer ------------------------------------------------------------------------
    def finish(self, response: httpx.Response, plan: Plan) -> SendResult:
        """Read the final response into a SendResult. A streamed llm answer is printed as it arrives; a
        media file sent as the body itself is streamed to disk beside the record, never held in memory."""
        if response.status_code in (404, 405):
            response.read()
            self.record.set_response(response)
            raise error_from_response(response, self.record.data.get("model", ""))
        if plan.request.stream:
            return read_stream(response, self.record, self.ui)
        if is_binary_media(response) and self.record.path is not None:
            return self._save_binary_body(response)
        response.read()
        self.record.set_response(response)
        return extract_result(response, plan.route)

    def _save_binary_body(self, response: httpx.Response) -> SendResult:
        assert self.record.path is not None
        try:
            output = _stream_to_file(response, self.record.path, 0, 1, self.ui)
        except httpx.HTTPError as exc:
            raise NetworkError(
                f"the media answer was cut off while saving it ({type(exc).__name__}); it may have been charged",
                hint="Check your Poe usage before retrying.",
            ) from None
        finally:
            response.close()
        summary = {"binary": True, "content_type": output["content_type"], "bytes": output["bytes"]}
        self.record.set_response(response, body=summary)
        return SendResult(status=response.status_code, body=None, outputs=[{**output, "source": "binary body"}])

    def get_json(self, url: str) -> dict[str, Any]:
        """A free GET (polls): every transient failure is retried."""
        response = self.send(PreparedRequest("GET", url, None), paid=False, llm=False)
        if response.status_code in (404, 405):
            raise error_from_response(response, self.record.data.get("model", ""))
        body = _json_or_none(response)
        if not isinstance(body, dict):
            raise ServerError(f"GET {url} answered {response.status_code} without a JSON object")
        return body


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def read_stream(response: httpx.Response, record: Record, ui: Ui) -> SendResult:
    """Print chat SSE deltas or Responses output_text deltas to stdout as they arrive."""
    record.set_response(response, body={"stream": True})
    text: list[str] = []
    usage: dict[str, Any] | None = None
    events = 0
    try:
        for data in iter_sse(response):
            events += 1
            if data == "[DONE]":
                break
            event = json.loads(data)
            if isinstance(event, dict) and "error" in event and not event.get("type", "").startswith("response."):
                raise classify_error_body(event, 200, record.data.get("model", ""))
            delta, new_usage, error = _stream_delta(event)
            if error:
                raise ServerError(f"the stream ended with an error: {error}")
            if new_usage:
                usage = new_usage
            if delta:
                text.append(delta)
                ui.stream_text(delta)
    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
        raise NetworkError(f"the stream was cut off ({type(exc).__name__}); what arrived is in the record") from None
    finally:
        response.close()
        assembled = "".join(text)
        record.data["response"]["body"] = {"stream": True, "event_count": events, "text": assembled, "usage": usage}
        record.data["text"] = assembled
        ui.stream_end(assembled)
    return SendResult(status=response.status_code, body=None, text=assembled, usage=usage)


def iter_sse(response: httpx.Response) -> Iterator[str]:
    """The data payloads of a server-sent event stream (multi-line data joined)."""
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield "\n".join(data)


def _stream_delta(event: Any) -> tuple[str, dict[str, Any] | None, str | None]:
    """(text delta, usage, error message) of one chat chunk or Responses event."""
    if not isinstance(event, dict):
        return "", None, None
    kind = event.get("type", "")
    if kind == "response.output_text.delta":
        return str(event.get("delta") or ""), None, None
    if kind in ("response.completed", "response.incomplete"):
        return "", (event.get("response") or {}).get("usage"), None
    if kind in ("response.failed", "error"):
        err = (event.get("response") or {}).get("error") or event.get("error") or event
        return "", None, str(err.get("message") if isinstance(err, dict) else err)
    delta = ""
    for choice in event.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if isinstance(content, str):
            delta += content
    return delta, event.get("usage") if isinstance(event.get("usage"), dict) else None, None


def poll_video_job(sender: Sender, plan: Plan, result: SendResult, ui: Ui) -> None:
    """Poll GET /videos/{id} until completed or failed; the job is never created twice."""
    settings = sender.settings
    job_url = f"{plan.request.url.rstrip('/')}/{result.job_id}"
    deadline = time.monotonic() + settings.poll_timeout
    polls = 0
    job = result.job or {}
    with ui.status(f"video job {result.job_id}: {job.get('status', 'queued')}") as status:
        while True:
            state = str(job.get("status", "queued"))
            sender.record.data["job"] = {
                "id": result.job_id,
                "status": state,
                "progress": job.get("progress"),
                "polls": polls,
                "raw": job,
            }
            if state == "completed":
                break
            if state == "failed":
                raise _job_failed(job)
            if time.monotonic() >= deadline:
                raise NetworkError(
                    f"video job {result.job_id} is still {state} after {settings.poll_timeout:.0f} s (--poll-timeout)",
                    hint=f"It may still finish: GET {job_url} later, or raise --poll-timeout.",
                )
            sender.sleep(min(settings.poll_interval, max(0.0, deadline - time.monotonic())))
            polls += 1
            try:
                job = sender.get_json(job_url)
            except (ServerError, NetworkError, RateLimitError) as exc:
                ui.retry(f"poll {polls} of {result.job_id} failed ({exc.message}); polling again")
                continue
            status.update(f"video job {result.job_id}: {job.get('status')} {job.get('progress') or 0}%")
    result.outputs = [
        {"kind": "video", "url": f"{job_url}/content", "source": "videos/{id}/content", "needs_key": True}
    ]
    result.job = job


def _job_failed(job: dict[str, Any]) -> PoeError:
    err = job.get("error") or {}
    message = err.get("message") if isinstance(err, dict) else str(err)
    code = str(err.get("code", "")) if isinstance(err, dict) else ""
    cls: type[ApiError] = RequestRejectedError if "moderation" in code or "policy" in code else ServerError
    return cls(
        f"video job {job.get('id')} failed: {message or 'no reason given'}",
        error_type=code or None,
        hint="Change the prompt or parameters and try again."
        if cls is RequestRejectedError
        else "Try again later; the job's error is in the record.",
    )


def fetch_balance(client: httpx.Client, settings: Settings) -> float | None:
    """Current point balance from /usage/current_balance (None when it cannot be read)."""
    try:
        response = client.get(
            _root_url(settings) + "/usage/current_balance",
            headers={"Authorization": f"Bearer {settings.api_key}"},
            timeout=30.0,
        )
    except httpx.HTTPError:
        return None
    if response.status_code >= 400:
        return None
    body = _json_or_none(response)
    value = body.get("current_point_balance") if isinstance(body, dict) else None
    return value if isinstance(value, int | float) else None


def _url(settings: Settings, path: str) -> str:
    return settings.base_url.rstrip("/") + path


def _root_url(settings: Settings) -> str:
    """https://api.poe.com/v1 -> https://api.poe.com (the /usage endpoints live at the root)."""
    return re.sub(r"/v\d+/?$", "", settings.base_url.rstrip("/"))


# =====================================================================================================
# 6. What came back: extraction of text and media, error classification
# =====================================================================================================

URL_RE = re.compile(r"https?://[^\s<>\"')\]]+")
MARKDOWN_IMAGE_RE = re.compile(r"!\[[^\]]*\]\((\S+?)(?:\s+\"[^\"]*\")?\)")
SUCCESS_KEYS = frozenset({"choices", "output", "data", "url", "status", "object"})
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "insufficient_credits": 402,
    "moderation_error": 403,
    "not_found_error": 404,
    "timeout_error": 408,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "provider_error": 500,
    "upstream_error": 502,
    "overloaded_error": 529,
}


def is_binary_media(response: httpx.Response) -> bool:
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype.startswith(("image/", "audio/", "video/")) or ctype == "application/octet-stream"


def extract_result(response: httpx.Response, route: Route) -> SendResult:
    """Pull the text, every media URL or inline file, the usage and the job id out of a 2xx answer."""
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if is_binary_media(response):
        return SendResult(
            status=response.status_code,
            body=None,
            outputs=[
                {
                    "kind": ctype.split("/")[0],
                    "content": response.content,
                    "content_type": ctype,
                    "source": "binary body",
                }
            ],
        )
    body = _json_or_none(response)
    if body is None:
        text = response.text
        urls = media_urls_in_text(text)
        # a body that starts like JSON but does not parse was cut off: its URLs may be cut too
        if urls and route.name != "responses" and not text.lstrip().startswith(("{", "[")):
            return SendResult(
                status=response.status_code,
                body=text,
                text=text,
                outputs=[{"url": u, "source": "text of a malformed answer"} for u in urls],
            )
        raise ServerError(
            f"Poe answered {response.status_code} with a body that is not JSON: {_clip(text)!r}",
            status=response.status_code,
            hint="A proxy or Poe itself is misbehaving; try again later.",
        )
    if isinstance(body, dict) and body.get("error") and not SUCCESS_KEYS.intersection(body):
        raise classify_error_body(body, response.status_code, "")
    result = SendResult(status=response.status_code, body=body)
    if not isinstance(body, dict):
        return result
    result.usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    if body.get("object") == "video" or (route.endpoint == "/videos" and "id" in body and "status" in body):
        result.job_id, result.job = str(body["id"]), body
        return result
    result.text = chat_text(body) if "choices" in body else responses_text(body) if "output" in body else None
    result.outputs = media_outputs(body, result.text)
    return result


def chat_text(body: dict[str, Any]) -> str:
    choices = body.get("choices") or []
    message = (choices[0] or {}).get("message") or {} if choices else {}
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def responses_text(body: dict[str, Any]) -> str:
    if isinstance(body.get("output_text"), str):
        return str(body["output_text"])
    parts = []
    for item in body.get("output") or []:
        for content in (item or {}).get("content") or []:
            if isinstance(content, dict) and content.get("type") in ("output_text", "text"):
                parts.append(str(content.get("text", "")))
    return "".join(parts)


def media_outputs(body: dict[str, Any], text: str | None) -> list[dict[str, Any]]:
    """Every media output whichever shape it came in: data[].url, data[].b64_json, url, or URLs in text."""
    outputs: list[dict[str, Any]] = []
    for item in body.get("data") or []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("url"), str):
            outputs.append({"url": item["url"], "source": "data[].url"})
        elif isinstance(item.get("b64_json"), str):
            content = base64.b64decode(item["b64_json"])
            outputs.append(
                {
                    "content": content,
                    "content_type": sniff_type(content[:16]) or "image/png",
                    "source": "data[].b64_json",
                }
            )
    if isinstance(body.get("url"), str):
        outputs.append({"url": body["url"], "source": "url"})
    if text:
        outputs.extend({"url": u, "source": "chat text"} for u in media_urls_in_text(text))
    seen: set[str] = set()
    unique = []
    for out in outputs:
        key = out.get("url") or hashlib.sha256(out["content"]).hexdigest()
        if key not in seen:
            seen.add(key)
            unique.append(out)
    return unique


def media_urls_in_text(text: str) -> list[str]:
    """Markdown image targets first, then bare URLs, each once, in order."""
    urls = [m.group(1) for m in MARKDOWN_IMAGE_RE.finditer(text)]
    urls += [u.rstrip(".,;:!?") for u in URL_RE.findall(text)]
    return list(dict.fromkeys(u for u in urls if re.match(r"https?://", u)))


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def error_from_response(response: httpx.Response, model: str) -> ApiError:
    body = _json_or_none(response)
    if isinstance(body, dict):
        return classify_error_body(body, response.status_code, model)
    text = re.sub(r"<[^>]+>", " ", response.text or "")
    text = re.sub(r"\s+", " ", text).strip() or "(empty body)"
    return _error_for_status(response.status_code, f"HTTP {response.status_code}: {_clip(text)}", None, model)


def classify_error_body(body: dict[str, Any], status: int, model: str) -> ApiError:
    """A Poe error object ({"error": {message, type, code}}) becomes the matching ApiError."""
    err = body.get("error")
    err = err if isinstance(err, dict) else {"message": str(err)}
    etype = err.get("type") if isinstance(err.get("type"), str) else None
    if status < 400:  # an error object inside a 2xx answer
        code = str(err.get("code"))
        status = int(code) if code.isdigit() and 400 <= int(code) < 600 else ERROR_TYPE_STATUS.get(etype or "", 500)
    message = str(err.get("message") or etype or "no message")
    return _error_for_status(status, f"HTTP {status} {etype or ''}: {message}".replace("  ", " "), etype, model)


def _error_for_status(status: int, message: str, etype: str | None, model: str) -> ApiError:
    kw: dict[str, Any] = {"status": status, "error_type": etype}
    if status == 401:
        return AuthenticationError(
            message,
            hint="POE_API_KEY was rejected: create a key at https://poe.com/api/keys and export POE_API_KEY=...",
            **kw,
        )
    if status == 402:
        return InsufficientPointsError(
            message,
            hint="Your Poe points ran out: add points or a subscription at https://poe.com/api/keys (see --balance).",
            **kw,
        )
    if status == 404:
        return NotFoundError(
            message,
            hint=f"The model {model!r} or the endpoint is wrong: check --model and "
            "--base-url; --list-models shows the catalogue.",
            **kw,
        )
    if status == 429:
        return RateLimitError(
            message,
            hint="Poe allows about 500 requests a minute per key: wait, lower --concurrency, or raise --max-retries.",
            **kw,
        )
    if status == 413:
        return RequestRejectedError(message, hint="The prompt or input is over the model's limit: shorten it.", **kw)
    if status == 403:
        return RequestRejectedError(
            message, hint="Poe refused the request (moderation or permissions): change the prompt or model.", **kw
        )
    if status == 408:
        return ServerError(message, hint="The model did not start in time; try again later.", **kw)
    if status >= 500:
        return ServerError(message, hint="Poe or the model's provider is failing or overloaded; try again later.", **kw)
    return RequestRejectedError(
        message, hint="Fix the request (see --describe-model for the model's parameters) and try again.", **kw
    )


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# =====================================================================================================
# 7. What to keep: the record (written atomically) and downloads
# =====================================================================================================

REDACTED = "***"
DROP_RESPONSE_HEADERS = frozenset({"set-cookie", "authorization"})


class Record:
    """The reproducible JSON record of one request: built up as the request goes, written atomically."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.started = time.monotonic()
        self.path: Path | None = None
        self.kept_previous: Path | None = None
        self.save_error: str | None = None

    @classmethod
    def start(cls, spec: RequestSpec, settings: Settings) -> Record:
        return cls(
            {
                "schema_version": RECORD_SCHEMA_VERSION,
                "tool": {"name": TOOL_NAME, "version": __version__},
                "state": "pending",
                "ok": False,
                "mode": spec.mode,
                "model": spec.model,
                "prompt": spec.prompt,
                "system": spec.system,
                "params": spec.params,
                "labels": spec.labels,
                "api": spec.api if spec.mode == "llm" else None,
                "inputs": [],
                "base_url": settings.base_url,
                "route": None,
                "request": None,
                "response": None,
                "request_id": None,
                "attempts": [],
                "job": None,
                "outputs": [],
                "text": None,
                "usage": None,
                "points": None,
                "error": None,
                "started_at": _now_iso(),
                "finished_at": None,
                "duration_s": None,
            }
        )

    @classmethod
    def detached(cls) -> Record:
        """A record kept only in memory, for free calls outside a request (--balance)."""
        return cls({"model": "", "attempts": [], "response": None, "request_id": None})

    @property
    def attempts(self) -> list[dict[str, Any]]:
        attempts: list[dict[str, Any]] = self.data["attempts"]
        return attempts

    @property
    def ok(self) -> bool:
        return bool(self.data["ok"])

    def set_plan(self, plan: Plan, fell_back: bool = False) -> None:
        route = {
            "name": plan.route.name,
            "endpoint": plan.route.endpoint,
            "reason": plan.route.reason,
            "fell_back": fell_back,
            "notes": plan.notes,
        }
        self.data.update(route=route, request=plan.request.for_record(), inputs=[img.describe() for img in plan.inputs])

    def set_response(self, response: httpx.Response, body: Any = None) -> None:
        headers = {k: v for k, v in response.headers.items() if k.lower() not in DROP_RESPONSE_HEADERS}
        if body is None:
            body = self._body_of(response)
        self.data["response"] = {"status": response.status_code, "headers": headers, "body": body}
        self.data["request_id"] = (
            response.headers.get("x-request-id")
            or response.headers.get("x-poe-request-id")
            or response.headers.get("cf-ray")
        )

    @staticmethod
    def _body_of(response: httpx.Response) -> Any:
        try:
            content = response.content
        except httpx.ResponseNotRead:
            return None
        ctype = response.headers.get("content-type", "")
        if ctype.startswith(("image/", "audio/", "video/", "application/octet-stream")):
            return {"binary": True, "content_type": ctype, "bytes": len(content)}
        try:
            return json.loads(content)
        except ValueError:
            return content.decode("utf-8", errors="replace")

    def set_result(self, result: SendResult) -> None:
        self.data.update(text=result.text, usage=result.usage or self.data.get("usage"))
        self.data["outputs"] = result.outputs
        if result.job is not None:
            self.data["job"] = {
                **(self.data["job"] or {}),
                "id": result.job_id,
                "status": result.job.get("status"),
                "raw": result.job,
            }

    def fail(self, exc: PoeError) -> None:
        self.data.update(state="cancelled" if isinstance(exc, Cancelled) else "failed", ok=False, error=exc.as_record())
        self._finish()

    def succeed(self) -> None:
        self.data.update(state="succeeded", ok=True, error=None)
        self._finish()

    def _finish(self) -> None:
        self.data["finished_at"] = _now_iso()
        self.data["duration_s"] = round(time.monotonic() - self.started, 3)

    @property
    def exit_code(self) -> int:
        error = self.data.get("error")
        return int(error["exit_code"]) if error else int(ExitCode.OK)

    def to_json(self, api_key: str = "") -> str:
        return redact(json.dumps(self.data, ensure_ascii=False, indent=2, default=_json_default), api_key)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def redact(text: str, api_key: str) -> str:
    """Remove the key (and any 8+ character run of it) from text bound for a file or a terminal."""
    if not api_key:
        return text
    text = text.replace(api_key, REDACTED)
    if len(api_key) >= 16:
        for i in range(0, len(api_key) - 7):
            piece = api_key[i : i + 8]
            if piece in text and not piece.isdigit():
                text = text.replace(piece, REDACTED)
    return text


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def atomic_write_text(path: Path, text: str, *, fsync: bool = True) -> None:
    """Write to a temp file in the same folder, fsync (unless told not to), then rename over the target.
    A lone surrogate (a path from an argument that was not UTF-8) is written as its JSON escape \\udcXX
    rather than lost with the record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n", errors="backslashreplace") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class RecordWriter:
    """Writes one record path atomically. Unless told it is rewriting its own record, an earlier record at
    that path is kept (with the files it names) under a timestamped name before the first write."""

    def __init__(self, path: Path, keep_earlier: bool = True) -> None:
        self.path = path
        self.kept_previous: Path | None = None
        self._keep_earlier = keep_earlier

    def write(self, text: str, *, fsync: bool = True) -> None:
        if self._keep_earlier:
            self._keep_earlier = False
            if self.path.exists():
                self.kept_previous = keep_previous(self.path)
        atomic_write_text(self.path, text, fsync=fsync)


def keep_previous(path: Path) -> Path:
    """outputs/fox.json -> outputs/fox.20261127T041800Z.json, and its saved outputs (fox.png) likewise, so a
    rerun with the same --out never destroys an earlier paid result. Returns the kept record's path."""
    stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y%m%dT%H%M%SZ")
    n = 1
    suffix = stamp
    while any(p.name.startswith(f"{path.stem}.{suffix}.") for p in path.parent.iterdir()):
        n += 1
        suffix = f"{stamp}-{n}"
    target = path.with_name(f"{path.stem}.{suffix}{path.suffix}")
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or not isinstance(old.get("outputs"), list):
        os.replace(path, target)
        return target
    for output in old["outputs"]:
        saved = Path(output["path"]) if isinstance(output, dict) and output.get("path") else None
        if saved and saved.exists() and saved.parent == path.parent and saved.name.startswith(path.stem):
            moved = saved.with_name(f"{path.stem}.{suffix}{saved.name[len(path.stem) :]}")
            os.replace(saved, moved)
            output["path"] = str(moved)
    atomic_write_text(target, json.dumps(old, ensure_ascii=False, indent=2))
    path.unlink()
    return target


EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
}


def output_path(record_path: Path, index: int, total: int, content_type: str) -> Path:
    """outputs/fox.json -> outputs/fox.png (outputs/fox-1.png, fox-2.png, ... when several)."""
    ext = EXTENSIONS.get(content_type.split(";")[0].strip().lower(), ".bin")
    stem = record_path.stem if total == 1 else f"{record_path.stem}-{index + 1}"
    return record_path.with_name(stem + ext)


def save_inline_outputs(record: Record, record_path: Path | None) -> None:
    """b64_json and binary outputs are written beside the record, and the record keeps path and hash."""
    outputs = record.data["outputs"]
    base = record_path or default_out_path(record.data["mode"])
    for i, out in enumerate(outputs):
        content = out.pop("content", None)
        if content is None:
            continue
        ctype = out.get("content_type") or sniff_type(content[:16])
        target = output_path(base, i, len(outputs), ctype)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(content)
        os.replace(tmp, target)
        out.update(path=str(target), bytes=len(content), sha256=hashlib.sha256(content).hexdigest(), content_type=ctype)


def is_api_url(url: str, base_url: str) -> bool:
    """True only for the API's own endpoints (same scheme, host and port, under the base path): the only
    URLs that ever get the key. A CDN, another host, or another path on the same host never does."""
    a, b = httpx.URL(url), httpx.URL(base_url)
    base_path = b.path.rstrip("/") + "/"
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port) and a.path.startswith(base_path)


def download_outputs(
    record: Record, record_path: Path | None, client: httpx.Client, settings: Settings, ui: Ui
) -> None:
    """Stream every URL output to a file beside the record (.part, then rename); hash and size go back
    into the record. The key is sent only to the API's own endpoints (is_api_url)."""
    if record_path is None:
        raise UsageError("--download needs a record path (--out)")
    outputs = record.data["outputs"]
    for i, out in enumerate(outputs):
        url = out.get("url")
        if not url or out.get("path"):
            continue
        out.update(download_file(client, url, record_path, i, len(outputs), settings, ui))


def download_file(
    client: httpx.Client,
    url: str,
    record_path: Path,
    index: int,
    total: int,
    settings: Settings,
    ui: Ui,
    max_redirects: int = 5,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {settings.api_key}"} if is_api_url(url, settings.base_url) else {}
    try:
        for _ in range(max_redirects + 1):
            with client.stream("GET", url, headers=headers, timeout=httpx.Timeout(settings.timeout, connect=15)) as r:
                if r.is_redirect and "location" in r.headers:
                    url = str(r.url.join(r.headers["location"]))
                    headers = headers if is_api_url(url, settings.base_url) else {}
                    continue
                if r.status_code >= 400:
                    raise DownloadError(
                        f"download of {_clip(url, 120)} failed: HTTP {r.status_code} (the URL expired or is missing)",
                        status=r.status_code,
                        hint="Poe media URLs expire (some within two hours): download promptly, or run the "
                        "request again.",
                    )
                return _stream_to_file(r, record_path, index, total, ui)
        raise DownloadError(f"download of {_clip(url, 120)} failed: too many redirects")
    except httpx.HTTPError as exc:
        raise DownloadError(
            f"download of {_clip(url, 120)} failed: {type(exc).__name__}",
            hint="Check the network and try --download-from RECORD again.",
        ) from None


def _stream_to_file(r: httpx.Response, record_path: Path, index: int, total: int, ui: Ui) -> dict[str, Any]:
    ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
    size = int(r.headers.get("content-length") or 0) or None
    digest = hashlib.sha256()
    written = 0
    part = record_path.with_name(f".{record_path.stem}-{index + 1}.download.part")
    try:
        with part.open("wb") as f, ui.progress(f"download {index + 1}/{total}", size) as advance:
            for chunk in r.iter_bytes(chunk_size=1 << 16):
                if not written and (not ctype or ctype == "application/octet-stream"):
                    ctype = sniff_type(chunk[:16]) or ctype
                f.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                advance(len(chunk))
        if size is not None and written != size:
            raise DownloadError(f"download cut short: {written} of {size} bytes")
        target = output_path(record_path, index, total, ctype)
        os.replace(part, target)
    finally:
        if part.exists():
            part.unlink()
    return {"path": str(target), "bytes": written, "sha256": digest.hexdigest(), "content_type": ctype}


# =====================================================================================================
# 8. Terminal output: rich on stderr, the result alone on stdout
# =====================================================================================================


class Ui:
    """All human-facing output: rich on stderr; stdout is left to the result."""

    def __init__(
        self,
        quiet: bool = False,
        verbose: bool = False,
        api_key: str = "",
        console: Console | None = None,
        stream_out: Any = None,
    ) -> None:
        self._console = console
        self.quiet = quiet
        self.verbose = verbose
        self.api_key = api_key
        self.stream_out = stream_out or sys.stdout
        self._streamed = False

    @property
    def is_terminal(self) -> bool:
        """A person is watching stderr: spinners, progress bars and colour are worth drawing."""
        if self._console is not None:
            return self._console.is_terminal
        return bool(getattr(sys.stderr, "isatty", lambda: False)())

    @property
    def console(self) -> Console:
        """rich's stderr console, made on first use: a run that prints nothing never imports rich."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._console

    def _print(self, style: str, text: str) -> None:
        text = redact(text, self.api_key)
        if self.is_terminal:
            self.console.print(text, style=style, markup=False)
        else:  # a pipe, a log, an agent: rich would print these same plain lines, so skip importing it
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def note(self, text: str) -> None:
        if not self.quiet:
            self._print("dim", text)

    def debug(self, text: str) -> None:
        if self.verbose:
            self._print("dim", text)

    def warn(self, text: str) -> None:
        if not self.quiet:
            self._print("yellow", f"warning: {text}")

    def retry(self, text: str) -> None:
        if not self.quiet:
            self._print("yellow", f"retry: {text}")

    def error(self, text: str) -> None:
        self._print("bold red", f"error: {text}")

    def stream_text(self, delta: str) -> None:
        self._streamed = True
        self.stream_out.write(delta)
        self.stream_out.flush()

    def stream_end(self, text: str) -> None:
        if self._streamed and not text.endswith("\n"):
            self.stream_out.write("\n")
            self.stream_out.flush()

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[Any]:
        if self.quiet or not self.is_terminal:
            yield _NullStatus()
            return
        with self.console.status(text) as status:
            yield status

    @contextlib.contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if self.quiet or not self.is_terminal:
            yield lambda n: None
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)


class _NullStatus:
    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


# =====================================================================================================
# 9. Batch: many requests, one connection pool, one rate gate
# =====================================================================================================

BATCH_KEYS = frozenset({"mode", "model", "prompt", "params", "out", "id", "system", "api", "route", "image", "images"})


@dataclass
class BatchLine:
    number: int
    id: str
    spec: RequestSpec
    plan: Plan | None = None


def load_batch(text: str, source: str, out_dir: Path, defaults: RequestSpec) -> list[BatchLine]:
    """Parse and check every JSONL line before anything is sent; errors name their line numbers."""
    lines: list[BatchLine] = []
    errors: list[str] = []
    seen_out: dict[Path, int] = {}
    # JSONL lines end at \n only: str.splitlines() would also split inside strings holding U+2028, U+0085, ...
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            line = _batch_line(number, raw, out_dir, defaults)
        except UsageError as exc:
            errors.append(f"line {number}: {exc.message}")
            continue
        assert line.spec.out is not None
        if line.spec.out in seen_out:
            errors.append(
                f"line {number}: out {line.spec.out} is also line {seen_out[line.spec.out]}'s; "
                "give each line its own id or out"
            )
            continue
        seen_out[line.spec.out] = number
        lines.append(line)
    if errors:
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        raise UsageError(f"{source}: {len(errors)} invalid line(s), nothing was sent: {shown}")
    if not lines:
        raise UsageError(f"{source}: no requests in the batch (one JSON object per line)")
    return lines


def _batch_line(number: int, raw: str, out_dir: Path, defaults: RequestSpec) -> BatchLine:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise UsageError("must be a JSON object with mode, model and prompt")
    unknown = sorted(set(obj) - BATCH_KEYS)
    if unknown:
        raise UsageError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(BATCH_KEYS))}")
    for key in ("prompt", "model"):
        if key not in obj and not getattr(defaults, key):
            raise UsageError(f"{key!r} is missing")
    for key in ("mode", "model", "prompt", "system", "api", "route", "id", "out"):
        if key in obj and not isinstance(obj[key], str):
            raise UsageError(f"{key!r} must be a string")
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise UsageError("'params' must be a JSON object")
    if not json_compliant(obj):
        raise UsageError("holds NaN, Infinity or a number too large for JSON; write a finite number")
    prompt = obj.get("prompt", defaults.prompt)
    if not prompt.strip():
        raise UsageError("'prompt' is empty")
    if not obj.get("model", defaults.model).strip():
        raise UsageError("'model' is empty")
    line_id = obj.get("id") or f"line-{number:04d}"
    if not re.fullmatch(r"[\w.-]{1,100}", line_id):
        raise UsageError(f"id {line_id!r} may use only letters, digits, '.', '_' and '-'")
    images = obj.get("images", obj.get("image", []))
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise UsageError("'images' must be a list of paths or URLs")
    mode = obj.get("mode", defaults.mode)
    if mode and mode not in MODES:
        raise UsageError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    for key, choices in (("api", APIS), ("route", ROUTES)):
        if key in obj and obj[key] not in choices:
            raise UsageError(f"{key} {obj[key]!r} is not one of {', '.join(choices)}")
    spec = dataclasses.replace(
        defaults,
        mode=mode,
        model=obj.get("model", defaults.model),
        prompt=prompt,
        params={**defaults.params, **params},
        system=obj.get("system", defaults.system),
        api=obj.get("api", defaults.api),
        route=obj.get("route", defaults.route),
        images=images,
        out=Path(obj["out"]) if "out" in obj else out_dir / f"{line_id}.json",
        stream=False,
    )
    return BatchLine(number, line_id, spec)


def previous_success(path: Path) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text(encoding="utf-8")).get("ok") is True
    return False


class BatchUi(Ui):
    """A worker's Ui: retries are counted for the progress bar, not printed between its lines."""

    def __init__(self, parent: Ui, counters: dict[str, int], lock: threading.Lock) -> None:
        super().__init__(quiet=True, verbose=False, api_key=parent.api_key, console=parent.console)
        self.counters = counters
        self.lock = lock

    def retry(self, text: str) -> None:
        with self.lock:
            self.counters["retries"] += 1


def run_batch(
    lines: list[BatchLine], settings: Settings, ui: Ui, *, concurrency: int, force: bool, summary_path: Path
) -> tuple[int, dict[str, Any]]:
    """Run every line with `concurrency` workers over one client and one rate gate; write the summary."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    gate = RateGate(concurrency)
    counters = {"done": 0, "failed": 0, "skipped": 0, "retries": 0}
    lock = threading.Lock()
    results: dict[int, dict[str, Any]] = {}
    stop = threading.Event()
    todo = []
    for line in lines:
        assert line.spec.out is not None
        if not force and previous_success(line.spec.out):
            counters["skipped"] += 1
            results[line.number] = _summary_row(line, None, skipped=True)
        else:
            todo.append(line)
    started = time.monotonic()

    def work(line: BatchLine, client: httpx.Client) -> None:
        if stop.is_set():
            results[line.number] = _summary_row(line, None, cancelled=True)
            return
        assert line.plan is not None
        try:
            record = run_request(
                line.spec, line.plan, settings, client=client, ui=BatchUi(ui, counters, lock), gate=gate
            )
        except Exception as exc:  # a bug on one line must not lose the others (its record says what happened)
            with lock:
                counters["failed"] += 1
            row = _summary_row(line, None) | {"state": "failed", "exit_code": int(ExitCode.INTERNAL),
                                              "error": f"internal error {type(exc).__name__}: {exc}"}  # fmt: skip
            results[line.number] = row | {"error": redact(row["error"], settings.api_key)}
            return
        with lock:
            counters["done" if record.ok else "failed"] += 1
        row = _summary_row(line, record)
        row["error"] = redact(row["error"], settings.api_key) if row["error"] else None  # Poe may echo the key
        results[line.number] = row

    cancelled = False
    show = not ui.quiet and ui.is_terminal
    with (
        make_client(settings, pool=concurrency) as client,
        Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=ui.console,
            transient=False,
            disable=not show,
        ) as bar,
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="poe") as pool,
    ):
        task = bar.add_task("batch", total=len(lines), completed=counters["skipped"])
        pending: set[Future[None]] = {pool.submit(work, line, client) for line in todo}
        while pending:
            try:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                if cancelled:
                    _write_summary(summary_path, lines, results, counters, started, cancelled=True)
                    ui.error("abandoned the requests in flight; their records say 'pending'")
                    os._exit(int(ExitCode.CANCELLED))
                cancelled = True
                stop.set()
                ui.warn("stopping: letting requests in flight finish (Ctrl-C again to abandon them)")
                continue
            for fut in finished:
                fut.result()
            waiting = gate.waiting_s()
            bar.update(
                task,
                completed=counters["done"] + counters["failed"] + counters["skipped"],
                description=f"done {counters['done']} · failed {counters['failed']} · retries "
                f"{counters['retries']}" + (f" · waiting {waiting:.1f} s on the rate limit" if waiting else ""),
            )
    counters["rate_limit_pauses"] = gate.pauses
    summary = _write_summary(summary_path, lines, results, counters, started, cancelled=cancelled)
    code = ExitCode.CANCELLED if cancelled else ExitCode.BATCH_FAILED if counters["failed"] else ExitCode.OK
    return int(code), summary


def _summary_row(
    line: BatchLine, record: Record | None, *, skipped: bool = False, cancelled: bool = False
) -> dict[str, Any]:
    state = "skipped" if skipped else "cancelled" if cancelled else record.data["state"] if record else "unknown"
    error = record.data.get("error") if record else None
    return {
        "line": line.number,
        "id": line.id,
        "out": str(line.spec.out),
        "state": state,
        "ok": skipped or bool(record and record.ok),
        "exit_code": record.exit_code if record else int(ExitCode.CANCELLED) if cancelled else 0,
        "error": error.get("message") if error else None,
        "outputs": [o.get("path") or o.get("url") for o in (record.data["outputs"] if record else [])],
    }


def _write_summary(
    path: Path,
    lines: list[BatchLine],
    results: dict[int, dict[str, Any]],
    counters: dict[str, int],
    started: float,
    *,
    cancelled: bool,
) -> dict[str, Any]:
    rows = [results.get(line.number) or _summary_row(line, None, cancelled=True) for line in lines]
    summary = {
        "schema_version": RECORD_SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": __version__},
        "kind": "batch-summary",
        "finished_at": _now_iso(),
        "duration_s": round(time.monotonic() - started, 3),
        "cancelled": cancelled,
        "total": len(lines),
        "succeeded": counters["done"],
        "failed": counters["failed"],
        "skipped": counters["skipped"],
        "retries": counters["retries"],
        "rate_limit_pauses": counters.get("rate_limit_pauses", 0),
        "lines": rows,
    }
    atomic_write_text(path, json.dumps(summary, ensure_ascii=False, indent=2))
    return summary


# =====================================================================================================
# 10. Command line: the typer app
# =====================================================================================================


EXAMPLES = """\
\b
Examples:
  uv run scripts/poe_request_orchestrator.py --mode image --model nano-banana-2 --prompt "A fox" --out outputs/fox.json
  uv run scripts/poe_request_orchestrator.py --mode video --model veo-3.1 --prompt Ski -P duration=6 -P resolution=1080p
  uv run scripts/poe_request_orchestrator.py --mode llm --model Claude-Sonnet-4.6 --prompt - < notes.txt
  uv run scripts/poe_request_orchestrator.py --mode llm --model gpt-5 --api responses --stream --prompt "Hi"
  uv run scripts/poe_request_orchestrator.py --batch requests.jsonl --concurrency 8
  uv run scripts/poe_request_orchestrator.py --list-models --mode video

\b
Exit codes: 0 ok, 2 bad input, 3 key missing/rejected, 4 out of points, 5 rejected (400/403/404/413),
6 rate limited, 7 server/overload, 8 network/timeout, 9 no media returned, 10 download failed,
11 batch had failures, 130 cancelled.
"""

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)


@app.command(help=__doc__.split("\n\n")[2].strip() if __doc__ else "", epilog=EXAMPLES)
def cli(
    mode: str | None = typer.Option(
        None, "--mode", "-m", help="llm, image, video or audio (inferred from the catalogue when left out)."
    ),
    model: str | None = typer.Option(None, "--model", help="The Poe bot name, any case (e.g. nano-banana-2)."),
    prompt: str | None = typer.Option(
        None,
        "--prompt",
        "-p",
        help="The prompt; '-' reads it from stdin (piped stdin is read when --prompt is left out).",
    ),
    system: str | None = typer.Option(None, "--system", "-s", help="A system prompt (llm mode)."),
    api: str = typer.Option("chat", "--api", help="llm: 'chat' (chat completions) or 'responses'."),
    params: str | None = typer.Option(None, "--params", help="Bot parameters as a JSON object, or @file.json."),
    param: list[str] | None = typer.Option(
        None, "--param", "-P", help="One parameter as key=value (value read as JSON when it parses); repeatable."
    ),
    image: list[str] | None = typer.Option(None, "--image", "-i", help="An input image file or URL; repeatable."),
    label: list[str] | None = typer.Option(
        None, "--label", help="key=value kept in the record's labels and never sent (e.g. a ticket id); repeatable."
    ),
    route: str = typer.Option("auto", "--route", help="auto (from the catalogue), direct, or chat."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where to write the JSON record (default: a new file under outputs/)."
    ),
    base_url: str = typer.Option(
        DEFAULT_BASE_URL, "--base-url", envvar="POE_BASE_URL", help="The API base URL (env POE_BASE_URL)."
    ),
    timeout: float = typer.Option(600.0, "--timeout", min=0.1, help="Seconds to wait for one answer."),
    max_retries: int = typer.Option(4, "--max-retries", min=0, help="Retries on 429/5xx/connection failures."),
    max_retry_wait: float = typer.Option(
        120.0, "--max-retry-wait", min=0, help="Longest Retry-After to wait out; a longer one fails at once."
    ),
    retry_uncertain: bool = typer.Option(
        False,
        "--retry-uncertain",
        help="Also retry paid media requests whose connection broke after sending (may be charged twice).",
    ),
    poll_interval: float = typer.Option(5.0, "--poll-interval", min=0, help="Seconds between video job polls."),
    poll_timeout: float = typer.Option(
        1800.0, "--poll-timeout", min=0, help="Give up on a video job after this many seconds."
    ),
    no_validate: bool = typer.Option(False, "--no-validate", help="Send parameters the catalogue does not declare."),
    refresh_models: bool = typer.Option(False, "--refresh-models", help="Re-read the model catalogue now."),
    stream: bool = typer.Option(False, "--stream", help="llm: print the answer as it arrives."),
    download: bool = typer.Option(False, "--download", help="Save every output beside the record."),
    download_from: Path | None = typer.Option(
        None, "--download-from", help="Download the outputs of an existing record."
    ),
    track_points: bool = typer.Option(False, "--track-points", help="Record the point balance before and after."),
    balance: bool = typer.Option(False, "--balance", help="Print the current point balance and exit."),
    list_models: bool = typer.Option(False, "--list-models", help="Show the model catalogue (filter with --mode)."),
    describe_model: str | None = typer.Option(None, "--describe-model", help="Show one model's parameters."),
    batch: str | None = typer.Option(None, "--batch", help="Run a JSONL file of requests ('-' for stdin)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=64, help="Batch: requests in flight at once."),
    force: bool = typer.Option(False, "--force", help="Batch: redo lines whose record already succeeded."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact request that would be sent; send nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole record (or listing) as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show each HTTP request on stderr."),
    parameter_mapping: bool = typer.Option(False, "--parameter-mapping", hidden=True),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """Turn (mode, model, prompt, params) into the right Poe API call and keep a JSON record of it."""
    api_key = os.environ.get("POE_API_KEY", "").strip()
    ui = Ui(quiet=quiet, verbose=verbose, api_key=api_key)
    if version:
        _echo(f"{TOOL_NAME} {__version__}")
        return
    if parameter_mapping:
        _echo(render_parameter_mapping(), end="")
        return
    settings = Settings(
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        timeout=timeout,
        max_retries=max_retries,
        max_retry_wait=max_retry_wait,
        retry_uncertain=retry_uncertain,
        poll_interval=poll_interval,
        poll_timeout=poll_timeout,
        refresh_models=refresh_models,
        download=download,
        track_points=track_points,
        dry_run=dry_run,
    )
    _check_choice("--api", api, APIS)
    _check_choice("--route", route, ROUTES)
    if mode is not None:
        _check_choice("--mode", mode.lower(), MODES)
    if list_models or describe_model:
        raise typer.Exit(show_catalogue(settings, ui, mode.lower() if mode else None, describe_model, as_json))
    if balance:
        raise typer.Exit(show_balance(settings, ui, as_json))
    if download_from:
        raise typer.Exit(download_record(download_from, settings, ui, as_json))
    spec = RequestSpec(
        mode=(mode or "").lower(),
        model=model or "",
        prompt="",
        params=parse_params(params, param),
        system=system,
        api=api,
        route=route,
        images=list(image or []),
        stream=stream,
        validate=not no_validate,
        labels=parse_pairs(label, "--label", "ticket=OPS-12"),
    )
    if batch:
        raise typer.Exit(batch_command(batch, spec, out, settings, ui, concurrency, force, as_json, prompt))
    if not model:
        raise UsageError("--model is missing; for example --model nano-banana-2 (see --list-models)")
    spec.prompt = read_prompt(prompt)
    raise typer.Exit(single_command(spec, out, settings, ui, as_json))


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{option} {value!r} is not valid; choose one of: {', '.join(choices)}")


def _echo(text: str, end: str = "\n") -> None:
    try:
        sys.stdout.write(text + end)
    except UnicodeEncodeError:  # a path with bytes that are not UTF-8: print it escaped, not crash after paying
        sys.stdout.write((text + end).encode("utf-8", "backslashreplace").decode("utf-8"))
    sys.stdout.flush()


def single_command(spec: RequestSpec, out: Path | None, settings: Settings, ui: Ui, as_json: bool) -> int:
    with make_client(settings) as client:
        plan = prepare_request(spec, settings, client, ui)
        if spec.stream and spec.mode != "llm":
            raise UsageError("--stream is for llm mode only; media calls are always sent with stream=false")
        if settings.dry_run:
            _echo(
                json.dumps(
                    plan.request.for_record(bool(settings.api_key)) | {"route": dataclasses.asdict(plan.route)},
                    ensure_ascii=False,
                    indent=2,
                )
            )
            return ExitCode.OK
        settings.api_key = require_key()
        spec.out = check_out_path(out or default_out_path(spec.mode))
        try:
            record = run_request(spec, plan, settings, client=client, ui=ui)
        except KeyboardInterrupt:
            ui.error(f"cancelled; record: {spec.out}")
            return ExitCode.CANCELLED
    if record.kept_previous:
        ui.note(f"kept the earlier record as {record.kept_previous}")
    report(record, ui, as_json, settings.api_key, streamed=plan.request.stream)
    if record.save_error:
        ui.error(record.save_error)
        return ExitCode.INTERNAL
    return record.exit_code


def report(record: Record, ui: Ui, as_json: bool, api_key: str, streamed: bool = False) -> None:
    """stdout: the result (or the record with --json); stderr: the error and where the record is."""
    data = record.data
    if as_json:
        _echo(record.to_json(api_key))
    elif record.ok:
        if data["mode"] == "llm":
            if not streamed:
                _echo(redact(data.get("text") or "", api_key))
        else:
            for output in data["outputs"]:
                _echo(output.get("path") or output.get("url"))
    if not record.ok and data.get("error"):
        error = data["error"]
        ui.error(error["message"] + (f" — {error['hint']}" if error.get("hint") else ""))
    if record.path:
        ui.note(f"record: {record.path}")


def batch_command(
    source: str,
    defaults: RequestSpec,
    out: Path | None,
    settings: Settings,
    ui: Ui,
    concurrency: int,
    force: bool,
    as_json: bool,
    prompt: str | None,
) -> int:
    if source == "-":
        text, name, stem = sys.stdin.read(), "stdin", "batch"
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise UsageError(f"--batch {source}: cannot read it ({exc.strerror or exc}); give a JSONL file") from None
        except UnicodeDecodeError:
            raise UsageError(f"--batch {source}: the file is not UTF-8 text; save it as UTF-8") from None
        name, stem = source, path.stem
    if prompt and prompt != "-":
        defaults.prompt = prompt
    summary_path = out or Path("outputs") / stem / "batch-summary.json"
    lines = load_batch(text, name, summary_path.parent, defaults)
    settings.api_key = settings.api_key if settings.dry_run else require_key()
    errors = []
    with make_client(settings) as client:
        catalogue = load_catalogue(client, settings, ui)
        for line in lines:
            try:
                line.plan = prepare_request(line.spec, settings, client, Ui(quiet=True), catalogue)
                assert line.spec.out is not None
                check_out_path(line.spec.out)
            except UsageError as exc:
                errors.append(f"line {line.number}: {exc.message}")
    if errors:
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        raise UsageError(f"{name}: {len(errors)} invalid line(s), nothing was sent: {shown}")
    if settings.dry_run:
        for line in lines:
            assert line.plan is not None
            _echo(
                json.dumps(
                    {"line": line.number, "id": line.id} | line.plan.request.for_record(bool(settings.api_key)),
                    ensure_ascii=False,
                )
            )
        return ExitCode.OK
    check_out_path(summary_path)
    try:
        code, summary = run_batch(lines, settings, ui, concurrency=concurrency, force=force, summary_path=summary_path)
    except KeyboardInterrupt:
        return ExitCode.CANCELLED
    if as_json:
        _echo(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        for row in summary["lines"]:
            for output in row["outputs"]:
                _echo(output)
    _batch_table(summary, ui)
    ui.note(f"summary: {summary_path}")
    return code


def _batch_table(summary: dict[str, Any], ui: Ui) -> None:
    if ui.quiet:
        return
    from rich.table import Table

    table = Table(
        title=f"batch: {summary['succeeded']} ok, {summary['failed']} failed, "
        f"{summary['skipped']} skipped, {summary['retries']} retries in {summary['duration_s']} s"
    )
    for column in ("line", "id", "state", "exit", "error / record"):
        table.add_column(column)
    for row in summary["lines"]:
        table.add_row(
            str(row["line"]),
            row["id"],
            row["state"],
            str(row["exit_code"]),
            redact(row["error"] or row["out"], ui.api_key),
        )
    ui.console.print(table)


def show_catalogue(settings: Settings, ui: Ui, mode: str | None, model_id: str | None, as_json: bool) -> int:
    with make_client(settings) as client:
        catalogue = load_catalogue(client, settings, ui)
    if catalogue is None:
        raise NetworkError(
            f"could not read the model catalogue at {settings.base_url}/models",
            hint="Check the network and --base-url.",
        )
    if model_id:
        model = catalogue.find(model_id)
        if model is None:
            raise NotFoundError(
                f"{model_id!r} is not in the catalogue{_did_you_mean(model_id, catalogue)}",
                hint="--list-models shows every id.",
            )
        if as_json:
            _echo(json.dumps(model.raw, ensure_ascii=False, indent=2))
        else:
            _print_model(model)
        return ExitCode.OK
    models = sorted((m for m in catalogue.models.values() if mode is None or mode in m.modes), key=lambda m: m.id)
    if as_json:
        _echo(
            json.dumps(
                [
                    {"id": m.id, "modes": m.modes, "routes": m.routes(), "parameters": sorted(m.parameters or {})}
                    for m in models
                ],
                indent=2,
            )
        )
        return ExitCode.OK
    from rich.table import Table

    table = Table("id", "modes", "routes", "declared parameters", title=f"{len(models)} models")
    for m in models:
        table.add_row(m.id, ", ".join(m.modes), ", ".join(m.routes()), ", ".join(sorted(m.parameters or {})))
    from rich.console import Console

    Console(highlight=False, soft_wrap=True).print(table)
    return ExitCode.OK


def _print_model(model: ModelInfo) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"{model.id}: {', '.join(model.modes)}; routes: {', '.join(model.routes())}", markup=False)
    if model.parameters is None:
        console.print("(the catalogue declares no parameters: any are sent unchecked)")
        return
    table = Table("parameter", "type", "allowed values", "default", "description")
    for name, p in sorted(model.parameters.items()):
        schema = p.get("schema") or {}
        allowed = ", ".join(str(v) for v in schema.get("enum") or []) or _range(schema)
        table.add_row(
            name,
            str(schema.get("type", "")),
            allowed,
            json.dumps(p.get("default_value")),
            str(p.get("description") or ""),
        )
    console.print(table)


def _range(schema: dict[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    return f"{low}..{high}" if low is not None or high is not None else "any"


def show_balance(settings: Settings, ui: Ui, as_json: bool) -> int:
    settings.api_key = require_key()
    with make_client(settings) as client:
        sender = Sender(client, settings, ui, RateGate(), Record.detached())
        body = sender.get_json(_root_url(settings) + "/usage/current_balance")
    value = body.get("current_point_balance")
    _echo(json.dumps(body, indent=2) if as_json else str(value))
    return ExitCode.OK


def download_record(path: Path, settings: Settings, ui: Ui, as_json: bool) -> int:
    """--download-from: fetch the outputs of an existing record and write it back with their files."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        outputs = data["outputs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--download-from {path}: not a readable record ({type(exc).__name__})") from None
    if not any(o.get("url") and not o.get("path") for o in outputs):
        ui.note("nothing to download: every output already has a file")
    if data.get("base_url") and str(data["base_url"]).rstrip("/") != settings.base_url:
        # a record is data, not configuration: the key goes only to the API this run is configured for
        ui.warn(f"the record was made against {data['base_url']}; the key is sent only to {settings.base_url}")
    if any(o.get("needs_key") for o in outputs):
        settings.api_key = require_key()
    record = Record(data)
    writer = RecordWriter(path, keep_earlier=False)  # rewriting its own record in place
    try:
        with make_client(settings) as client:
            download_outputs(record, path, client, settings, ui)
    finally:
        writer.write(record.to_json(settings.api_key))
    if as_json:
        _echo(record.to_json(settings.api_key))
    else:
        for output in outputs:
            _echo(output.get("path") or output.get("url"))
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """Entry point: every error becomes one line on stderr and its exit code; never a traceback."""
    return run_command(app, list(sys.argv[1:] if argv is None else argv))


def env_base_url() -> str:
    return os.environ.get("POE_BASE_URL") or DEFAULT_BASE_URL


def run_command(typer_app: typer.Typer, args: list[str]) -> int:
    """Run a click command so that any error is one line on stderr and an exit code (shared with the wrapper)."""
    if sys.platform == "win32":  # PowerShell consoles and pipes: print any Unicode answer, never crash on it
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(encoding="utf-8")  # type: ignore[union-attr]
    verbose = "--verbose" in args or "-v" in args
    api_key = os.environ.get("POE_API_KEY", "")
    ui = Ui(api_key=api_key)  # its console is made only if an error is printed
    try:
        command = typer.main.get_command(typer_app)
        result = command.main(args=args, prog_name=Path(sys.argv[0]).name, standalone_mode=False)
        return int(result or 0)
    except PoeError as exc:
        ui.error(exc.message + (f" — {exc.hint}" if exc.hint else ""))
        return int(exc.exit_code)
    except typer.Exit as exc:  # pragma: no cover - click turns Exit into a return value
        return int(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        ui.error("cancelled")
        return int(ExitCode.CANCELLED)
    except Exception as exc:
        if _is_click_usage_error(exc):  # a bad option or value, found by the option parser
            ui.error(f"{exc.format_message()} (see --help)")  # type: ignore[attr-defined]
            return int(ExitCode.USAGE)
        if verbose:  # a bug: the traceback on request, with the key taken out of any message quoting it
            import traceback

            ui.console.print(redact("".join(traceback.format_exception(exc)), api_key), markup=False)
        ui.error(f"internal error {type(exc).__name__}: {exc} (please report; --verbose shows the traceback)")
        return int(ExitCode.INTERNAL)


def _is_click_usage_error(exc: Exception) -> bool:
    """typer vendors click under a private module, so its ClickException is recognised by its shape."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


if __name__ == "__main__":
    sys.exit(main())
