"""Issue 6, fuzzed input: property-based tests over everything a user can type or hand in.

Valid input is sent intact (any Unicode prompt, any JSON parameters, any odd path); invalid input never
gives a traceback, always one clear `error:` line and a non-zero exit, and nothing is sent. The parsers and
`main()` are driven in-process with many examples; a few examples go through the real CLI in a subprocess.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import poe_request_orchestrator as poe
import pytest
from cli_runner import ORCHESTRATOR, cli_env, validate_record
from conftest import EMULATOR_KEY, use_in_process
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from poe_emulator import STANDARD_CHAT_KEYS, PoeEmulator

# Many in-process examples; the emulator fixture is shared by every example of one test.
IN_PROCESS = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PURE = settings(max_examples=300, deadline=None, database=None)
SUBPROCESS = settings(
    max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text a command line can carry: any code point but NUL and lone surrogates.
ARG_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
arg_text = st.text(ARG_CHARS)
prompts = st.text(ARG_CHARS, min_size=1).filter(lambda p: p.strip() != "" and p != "-")
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | arg_text
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(arg_text, inner, max_size=3), max_leaves=8
)
# Names Poe itself checks (temperature, n, ...) or that the tool sets: kept out of "anything goes" params.
RESERVED = {"model", "messages", "prompt", "input", "stream", "extra_body"}
free_keys = st.text(ARG_CHARS, min_size=1, max_size=20).filter(
    lambda k: k == k.strip() and k not in RESERVED | STANDARD_CHAT_KEYS | poe.STANDARD_FIELDS
)
free_params = st.dictionaries(free_keys, json_values, max_size=4)


def strict_json(text: str) -> Any:
    """What JSON itself says the text is (no NaN or Infinity); raises ValueError when it is not JSON."""

    def reject(token: str) -> Any:
        raise ValueError(token)

    value = json.loads(text, parse_constant=reject)
    json.dumps(value, allow_nan=False)  # 1e999 parses to inf: not JSON either
    return value


# --- the parsers, in-process -----------------------------------------------------------------------------


@PURE
@given(params=st.dictionaries(arg_text, json_values, max_size=6), ascii_only=st.booleans())
def test_params_json_object_round_trips(params: dict[str, Any], ascii_only: bool) -> None:
    assert poe.parse_params(json.dumps(params, ensure_ascii=ascii_only)) == params


@settings(max_examples=100, deadline=None, database=None)
@given(params=st.dictionaries(arg_text, json_values, max_size=6), bom=st.booleans(), name=arg_text)
def test_params_file_round_trips_whatever_its_name(params: dict[str, Any], bom: bool, name: str) -> None:
    filename = "".join(c for c in name if c != "/")[:40] or "p"
    assume(filename not in (".", ".."))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / filename
        path.write_text(("\ufeff" if bom else "") + json.dumps(params, ensure_ascii=False), encoding="utf-8")
        assert poe.parse_params(f"@{path}") == params


@PURE
@given(text=arg_text)
@example(text='{"x": NaN}')
@example(text='{"x": Infinity}')
@example(text='{"x": 1e999}')
@example(text="[1, 2]")
@example(text="")
def test_any_params_text_is_a_json_object_or_a_usage_error(text: str) -> None:
    assume(not text.startswith("@"))
    try:
        parsed = poe.parse_params(text)
    except poe.UsageError as exc:
        assert exc.message.startswith("--params")
        return
    if text:
        assert parsed == strict_json(text)
    json.dumps(parsed, allow_nan=False)  # whatever is accepted can be sent


@PURE
@given(key=st.text(ARG_CHARS.filter(lambda c: c != "="), min_size=1), value=arg_text)
@example(key="seed", value="NaN")
@example(key="seed", value="-Infinity")
@example(key="big", value="1e999")
@example(key="ratio", value="16:9")
@example(key="eq", value="a=b=c")
def test_param_pair_value_is_json_when_it_parses_else_the_exact_string(key: str, value: str) -> None:
    assume(key.strip())
    parsed = poe.parse_params(None, [f"{key}={value}"])
    try:
        expected = strict_json(value)
    except ValueError:
        expected = value
    assert parsed == {key.strip(): expected}
    json.dumps(parsed, allow_nan=False)


@PURE
@given(pair=arg_text)
def test_param_pair_without_a_key_is_a_usage_error(pair: str) -> None:
    key, sep, _ = pair.partition("=")
    assume(not sep or not key.strip())
    with pytest.raises(poe.UsageError, match="is not key=value"):
        poe.parse_params(None, [pair])


@PURE
@given(prompt=st.text())
def test_prompt_argument_is_kept_exactly(prompt: str) -> None:
    if prompt.strip() and prompt != "-":
        assert poe.read_prompt(prompt, io.StringIO("unused")) == prompt
    elif prompt != "-":
        with pytest.raises(poe.UsageError, match="no prompt given"):
            poe.read_prompt(prompt, io.StringIO(""))


@PURE
@given(text=st.text())
def test_prompt_from_stdin_is_kept_exactly(text: str) -> None:
    for option in ("-", None):  # --prompt -, or stdin piped without --prompt
        if text.strip():
            assert poe.read_prompt(option, io.StringIO(text)) == text  # byte for byte, final newline included
        else:
            with pytest.raises(poe.UsageError, match="stdin is empty"):
                poe.read_prompt(option, io.StringIO(text))


batch_rows = st.fixed_dictionaries(
    {"prompt": prompts, "model": st.sampled_from(["gpt-5", "nano-banana-2", "Claude-Sonnet-4.6"])},
    optional={
        "mode": st.sampled_from(poe.MODES),
        "params": st.dictionaries(arg_text, json_values, max_size=3),
        "system": arg_text,
        "id": st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True),
    },
)


@settings(max_examples=150, deadline=None, database=None)
@given(rows=st.lists(batch_rows, min_size=1, max_size=6), crlf=st.booleans())
def test_valid_batch_lines_become_exactly_those_requests(rows: list[dict[str, Any]], crlf: bool) -> None:
    ids = [row.get("id") for row in rows if "id" in row]
    assume(len(ids) == len(set(ids)) and not any(i.startswith("line-") for i in ids))
    text = ("\r\n" if crlf else "\n").join(json.dumps(row, ensure_ascii=False) for row in rows)
    lines = poe.load_batch(text, "fuzz.jsonl", Path("out"), poe.RequestSpec(mode="", model="", prompt=""))
    assert [line.number for line in lines] == list(range(1, len(rows) + 1))
    for line, row in zip(lines, rows, strict=True):
        assert line.spec.prompt == row["prompt"] and line.spec.model == row["model"]
        assert line.spec.params == row.get("params", {})
        assert line.spec.system == row.get("system")
        assert line.spec.out == Path("out") / f"{row.get('id') or f'line-{line.number:04d}'}.json"


@PURE
@given(lines=st.lists(arg_text | st.builds(json.dumps, json_values), min_size=1, max_size=5))
@example(lines=['{"model": " ", "prompt": "x"}'])
@example(lines=['{"model": "gpt-5", "prompt": "x", "params": {"seed": NaN}}'])
@example(lines=['{"model": "gpt-5", "prompt": "x \u2028 y \u0085 z"}'])
def test_any_batch_text_is_requests_or_one_usage_error_naming_the_lines(lines: list[str]) -> None:
    text = "\n".join(line.replace("\n", " ").replace("\r", " ") for line in lines)
    defaults = poe.RequestSpec(mode="", model="", prompt="")
    try:
        parsed = poe.load_batch(text, "fuzz.jsonl", Path("out"), defaults)
    except poe.UsageError as exc:
        assert exc.message.startswith("fuzz.jsonl: ")
        assert "invalid line(s), nothing was sent: line " in exc.message or "no requests" in exc.message
        return
    for line in parsed:
        assert line.spec.prompt.strip() and line.spec.model.strip()
        assert line.spec.mode in ("", *poe.MODES)
        json.dumps(line.spec.params, allow_nan=False)


# --- main() in-process: what a user types, end to end but without a subprocess ---------------------------


class Main:
    """Runs poe_request_orchestrator.main() in tmp_path against the emulator, capturing stdout and stderr."""

    def __init__(self, emulator: PoeEmulator, folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
        self.emulator = emulator
        self.folder = folder
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = poe.main(list(args))
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err, err
        return code, out, err

    def refused(self, *args: str, stdin: str = "") -> str:
        """Run invalid input: exit 2, one error line, nothing on stdout, nothing sent, no record written."""
        before = len(self.emulator.paid_calls())
        files = self.records()
        code, out, err = self(*args, stdin=stdin)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2, err
        assert len(errors) == 1, err
        assert out == ""
        assert len(self.emulator.paid_calls()) == before
        assert self.records() == files
        return errors[0]

    def records(self) -> set[Path]:
        return {p for p in self.folder.rglob("*.json") if ".cache" not in p.parts}

    def out(self) -> str:
        return f"o-{uuid.uuid4().hex[:8]}.json"


@pytest.fixture
def run_main(emulator: PoeEmulator, tmp_path: Path, capsys, monkeypatch) -> Iterator[Main]:
    use_in_process(monkeypatch, tmp_path, emulator, EMULATOR_KEY)
    yield Main(emulator, tmp_path, capsys, monkeypatch)


def _record(folder: Path, name: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((folder / name).read_text(encoding="utf-8"))
    validate_record(record)
    return record


@IN_PROCESS
@given(prompt=prompts, system=st.none() | prompts)
def test_any_unicode_prompt_arrives_intact(run_main: Main, prompt: str, system: str | None) -> None:
    out = run_main.out()
    extra = ["--system", system] if system is not None else []
    code, stdout, err = run_main("--mode", "llm", "--model", "gpt-5", "--prompt", prompt, *extra, "--out", out)
    assert code == 0, err
    sent = run_main.emulator.paid_calls()[-1].json["messages"]
    assert sent[-1] == {"role": "user", "content": prompt}
    if system is not None:
        assert sent[0] == {"role": "system", "content": system}
    record = _record(run_main.folder, out)
    assert record["prompt"] == prompt and record["system"] == system
    assert record["text"] == f"Echo from gpt-5: {prompt}" and stdout == record["text"] + "\n"


@IN_PROCESS
@given(params=free_params, via_file=st.booleans())
def test_valid_params_are_sent_and_recorded_exactly(run_main: Main, params: dict[str, Any], via_file: bool) -> None:
    out = run_main.out()
    text = json.dumps(params, ensure_ascii=False)
    if via_file:
        (run_main.folder / "p.json").write_text(text, encoding="utf-8")
        text = "@p.json"
    code, _, err = run_main("--mode", "llm", "--model", "legacy-bot", "--prompt", "x", "--params", text, "--out", out)
    assert code == 0, err
    body = run_main.emulator.paid_calls()[-1].json
    assert {k: v for k, v in body.items() if k not in ("model", "messages", "stream")} == params
    record = _record(run_main.folder, out)
    assert record["params"] == params and record["request"]["body"] == body


@IN_PROCESS
@given(pairs=st.dictionaries(free_keys.filter(lambda k: "=" not in k), json_values, min_size=1, max_size=3))
def test_valid_param_pairs_are_sent_exactly(run_main: Main, pairs: dict[str, Any]) -> None:
    args = [a for k, v in pairs.items() for a in ("--param", f"{k}={json.dumps(v, ensure_ascii=False)}")]
    code, _, err = run_main("--mode", "llm", "--model", "legacy-bot", "--prompt", "x", *args, "--out", run_main.out())
    assert code == 0, err
    body = run_main.emulator.paid_calls()[-1].json
    assert {k: v for k, v in body.items() if k not in ("model", "messages", "stream")} == pairs


def _not_an_object(text: str) -> bool:
    try:
        return not isinstance(strict_json(text), dict)
    except ValueError:
        return True


@IN_PROCESS
@given(text=arg_text.filter(lambda t: t != "" and not t.startswith("@") and _not_an_object(t)))
@example(text='{"seed": NaN}')
@example(text='{"seed": 1e999}')
def test_invalid_params_are_refused_before_sending(run_main: Main, text: str) -> None:
    error = run_main.refused("--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--params", text,
                             "--out", "o.json")  # fmt: skip
    assert "--params" in error


@IN_PROCESS
@given(
    case=st.one_of(
        st.tuples(st.just("pair"), arg_text.filter(lambda p: "=" not in p or not p.partition("=")[0].strip())),
        st.tuples(st.just("name"), free_keys.filter(lambda k: "=" not in k and k not in poe.DIRECT_FIELDS["image"])),
        st.tuples(st.just("enum"), arg_text.filter(lambda v: v not in ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5",
                                                                        "5:4", "9:16", "16:9", "21:9"))),
        st.tuples(st.just("mode"), arg_text.filter(lambda m: m.lower() not in poe.MODES)),
    )
)  # fmt: skip
@example(case=("name", "model"))
@example(case=("name", "prompt"))
def test_invalid_parameters_and_choices_are_refused_before_sending(run_main: Main, case: tuple[str, str]) -> None:
    kind, value = case
    args = ["--mode", "image", "--model", "nano-banana-2", "--prompt", "x", "--out", "o.json"]
    if kind == "pair":
        args += ["--param", value]
    elif kind == "name":
        assume(value not in ("aspect", "aspect_ratio", "image_size", "image_only", "web_search"))
        args += ["--param", f"{value}=1"]
    elif kind == "enum":
        args += ["--param", f"aspect_ratio={json.dumps(value)}"]
    else:
        args[1] = value
    error = run_main.refused(*args)
    needle = {"pair": "is not key=value", "name": "parameter", "enum": "is not allowed", "mode": "--mode"}[kind]
    assert needle in error


@IN_PROCESS
@given(lines=st.lists(arg_text | st.builds(json.dumps, json_values) | batch_rows.map(json.dumps), max_size=5))
def test_invalid_batch_files_are_refused_before_sending(run_main: Main, lines: list[str]) -> None:
    lines = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    try:
        poe.load_batch("\n".join(lines), "b.jsonl", Path("outputs/b"), poe.RequestSpec(mode="", model="", prompt=""))
        assume(False)  # a valid batch: covered by the batch tests
    except poe.UsageError:
        pass
    (run_main.folder / "b.jsonl").write_text("\n".join(lines), encoding="utf-8")
    error = run_main.refused("--batch", "b.jsonl")
    assert error.startswith("error: b.jsonl: ")


odd_names = (
    st.text(ARG_CHARS.filter(lambda c: c != "/"), min_size=1, max_size=24)
    .filter(lambda n: n not in (".", "..") and len(n.encode()) < 120)
    .map(lambda n: n.strip("\n") or "x")
)


@IN_PROCESS
@given(folder=odd_names, name=odd_names)
@example(folder="with space", name="-starts with a dash")
@example(folder="ünï cødé ✓", name="名前")
def test_odd_out_paths_get_the_record(run_main: Main, folder: str, name: str) -> None:
    assume(folder not in (".", "..") and name not in (".", ".."))
    target = Path(folder) / f"{name}.json"
    assume(not (run_main.folder / target).exists() and not (run_main.folder / folder).is_file())
    code, _, err = run_main("--mode", "llm", "--model", "gpt-5", "--prompt", "p", "--out", str(target))
    assert code == 0, err
    assert _record(run_main.folder, str(target))["prompt"] == "p"


def test_batch_file_that_is_not_utf8_is_refused(run_main: Main) -> None:
    (run_main.folder / "latin1.jsonl").write_bytes(b'{"mode": "llm", "model": "gpt-5", "prompt": "caf\xe9"}\n')
    assert "UTF-8" in run_main.refused("--batch", "latin1.jsonl")


def test_out_inside_a_file_or_folder_is_refused(run_main: Main) -> None:
    (run_main.folder / "afile").write_text("x")
    (run_main.folder / "adir").mkdir()
    for out in ("afile/o.json", "adir"):
        assert "--out" in run_main.refused("--mode", "llm", "--model", "gpt-5", "--prompt", "p", "--out", out)


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (["--params", "@missing.json"], "", "cannot read the file"),
        (["--params", "@."], "", "cannot read the file"),
        (["--prompt", "   "], "", "no prompt given"),
        (["--prompt", "-"], "  \n", "the prompt on stdin is empty"),
        (["--prompt", "-"], " \u2028 ok\n", None),  # any text at all is sent exactly as read
        (["--model", ""], "", "--model is missing"),
        (["--timeout", "0"], "", "--timeout"),
        (["--concurrency", "0", "--batch", "-"], "", "--concurrency"),
        (["--batch", "-"], "\n# only a comment\n", "no requests"),
        (["--batch", "-"], '{"prompt": "x", "model": "gpt-5", "id": "../escape"}', "may use only letters"),
    ],
)
def test_other_invalid_input_is_refused_before_sending(run_main: Main, args, stdin, needle) -> None:
    base = ["--mode", "llm", "--model", "gpt-5", "--prompt", "x", "--out", "o.json"]
    for option in ("--prompt", "--model", "--batch"):
        if option in args and option in base:
            i = base.index(option)
            del base[i : i + 2]
    if needle is None:
        code, _, err = run_main(*base, *args, stdin=stdin)
        assert code == 0, err
        assert run_main.emulator.paid_calls()[-1].json["messages"][-1]["content"] == stdin
        return
    assert needle in run_main.refused(*base, *args, stdin=stdin)


# --- through the real CLI ---------------------------------------------------------------------------------


@SUBPROCESS
@given(prompt=prompts)
@example(prompt="--json")
@example(prompt="  ⚠️ leading and trailing space, \t tab, \r\n CRLF, RTL \u202e text \u202c, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢  ")
def test_any_unicode_prompt_arrives_intact_through_the_cli(cli, emulator: PoeEmulator, prompt: str) -> None:
    before = len(emulator.paid_calls())
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", prompt, "--out", "o.json", "--quiet")
    assert r.code == 0, r.stderr
    assert emulator.paid_calls()[before].json["messages"][-1]["content"] == prompt
    assert r.record["prompt"] == prompt and r.record["text"] == f"Echo from gpt-5: {prompt}"


@settings(max_examples=3, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(prompts, min_size=3, max_size=12))
def test_any_unicode_prompts_arrive_intact_through_a_batch(cli, emulator: PoeEmulator, tmp_path, batch) -> None:
    folder = f"b{uuid.uuid4().hex[:6]}"
    rows = [{"id": f"p{i}", "mode": "llm", "model": "gpt-5", "prompt": p} for i, p in enumerate(batch)]
    (tmp_path / f"{folder}.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    before = len(emulator.paid_calls())
    r = cli("--batch", f"{folder}.jsonl", "--concurrency", "4", "--quiet")
    assert r.code == 0, r.stderr
    sent = sorted(c.json["messages"][-1]["content"] for c in emulator.paid_calls()[before:])
    assert sent == sorted(batch)
    for i, prompt in enumerate(batch):
        record = json.loads((tmp_path / "outputs" / folder / f"p{i}.json").read_text(encoding="utf-8"))
        validate_record(record)
        assert record["prompt"] == prompt and record["text"] == f"Echo from gpt-5: {prompt}"


def test_a_huge_prompt_from_stdin_arrives_intact(cli, emulator: PoeEmulator) -> None:
    unit = "Ünïcødé ✓ 名前 𝔘 emoji 🦊 \u202e rtl \u202c tab\t CRLF\r\n"
    prompt = unit * (3_000_000 // len(unit.encode()))  # about 3 MB
    r = cli("--mode", "llm", "--model", "gpt-5", "--prompt", "-", "--out", "o.json", "--quiet", stdin=prompt)
    assert r.code == 0, r.stderr
    [call] = emulator.paid_calls()
    assert call.json["messages"][-1]["content"] == prompt
    assert r.record["prompt"] == prompt


def test_bytes_that_are_not_utf8_are_refused_as_text_and_kept_in_paths(emulator: PoeEmulator, tmp_path: Path) -> None:
    env = cli_env(emulator.base_url, EMULATOR_KEY, tmp_path / ".cache")
    base = [sys.executable, str(ORCHESTRATOR), "--mode", "llm", "--model", "gpt-5", "--out", "o.json"]
    runs: list[tuple[list[Any], bytes]] = [
        ([*base, "--prompt", b"caf\xe9 latin-1"], b""),
        ([*base, "--prompt", "-"], b"caf\xe9 latin-1"),
        ([*base, "--prompt", "x", "--params", "@latin1.json"], b""),
    ]
    (tmp_path / "latin1.json").write_bytes(b'{"voice": "Ren\xe9e"}')
    for argv, stdin in runs:
        proc = subprocess.run(argv, cwd=tmp_path, env=env, input=stdin, capture_output=True, timeout=60)
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 2, err
        assert "Traceback" not in err and "internal error" not in err
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
        assert "UTF-8" in err
    assert emulator.paid_calls() == []
    assert not (tmp_path / "o.json").exists()

    # A file name that is not UTF-8 is still a valid path: the paid image and its record must reach the disk.
    emulator.image_shape = "b64_json"  # the image exists only inside the answer
    argv = [sys.executable, str(ORCHESTRATOR), "--mode", "image", "--model", "gpt-image-1", "--prompt", "p"]
    proc = subprocess.run([*argv, "--out", b"caf\xe9.json"], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "caf\udce9.png").read_bytes().startswith(b"\x89PNG")
    record = json.loads((tmp_path / "caf\udce9.json").read_text(encoding="utf-8"))
    validate_record(record)
    assert record["ok"] and record["outputs"][0]["path"] == "caf\udce9.png"
    assert proc.stdout.strip() == b"caf\\udce9.png"  # printed escaped rather than crashing after paying
