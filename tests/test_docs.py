"""Docs that cannot rot: README.md, SKILL.md and references/*.md are checked against the real CLI.

- Every shell command in a fenced ``bash``/``sh``/``shell``/``console``/``powershell`` block that runs
  ``scripts/poe_request_orchestrator.py`` or ``scripts/generate_nano_banana_image.py`` is run as a
  subprocess against the Poe emulator. It must exit 0, or N when the line ends with ``# exit N``.
- Files that commands read (``notes.txt``, ``params.json``, ``requests.jsonl``) come from the docs
  themselves: a fenced block right after ``<!-- file: NAME -->`` is written to the command's folder.
  ``photo.png`` is made here (a 1x1 PNG).
- Every relative link resolves, including ``#anchors``.
- SKILL.md's front matter passes the reference validator (skills-ref) and our own checks of the rules.
- The exit-code tables match the ExitCode enum, and parameter-mapping.md embeds the code's own table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import poe_request_orchestrator as orchestrator
import pytest
import skills_ref
from conftest import EMULATOR_KEY
from poe_emulator import TINY_PNG, PoeEmulator

ROOT = Path(__file__).resolve().parent.parent
SKILL_NAME = "poe-api-universal-generator"
DOC_FILES = [ROOT / "README.md", ROOT / "SKILL.md", *sorted((ROOT / "references").glob("*.md"))]
SCRIPTS = {
    "scripts/poe_request_orchestrator.py": ROOT / "scripts" / "poe_request_orchestrator.py",
    "scripts/generate_nano_banana_image.py": ROOT / "scripts" / "generate_nano_banana_image.py",
}
SHELL_LANGS = {"bash", "sh", "shell", "zsh", "console", "powershell", "pwsh", "ps1"}
POWERSHELL_LANGS = {"powershell", "pwsh", "ps1"}
# Base URLs a doc may show; the test points them at the emulator.
DOC_BASE_URLS = ("http://127.0.0.1:8765/v1", "https://api.poe.com/v1")
# The key of a hand-started emulator (uv run tests/poe_emulator.py); the fixture's key replaces it.
DOC_EMULATOR_KEY = "poe-emulator-key"
RECORD_SCHEMA = json.loads((ROOT / "references" / "record.schema.json").read_text(encoding="utf-8"))
QUICK_START = [
    'uv run scripts/poe_request_orchestrator.py --mode image --model nano-banana-2 --prompt "Sleeping fox under '
    'aurora, cinematic lighting" --out outputs/fox.json',
    'uv run scripts/poe_request_orchestrator.py --mode video --model veo-3.1 --prompt "A skier in the Alps" --params '
    '\'{"duration":"6s","resolution":"1080p"}\' --out outputs/video.json',
    'uv run scripts/poe_request_orchestrator.py --mode audio --model lyria-3 --prompt "Ambient synthwave loop" '
    "--out outputs/audio.json",
    'uv run scripts/poe_request_orchestrator.py --mode llm --model Claude-Sonnet-4.6 --prompt "Summarize the latest '
    'build status" --out outputs/llm.json',
    'uv run scripts/generate_nano_banana_image.py --prompt "A cat in a hat" --aspect-ratio "4:3" --seed 42 '
    '--out "outputs/cat.json"',
]


# --------------------------------------------------------------------------- reading Markdown


@dataclass
class Block:
    doc: Path
    line: int  # line number of the opening fence
    lang: str
    lines: list[tuple[int, str]]  # (line number, text)
    file_name: str | None = None  # set by a preceding <!-- file: NAME --> marker


FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
FILE_MARKER = re.compile(r"^\s*<!--\s*file:\s*(\S+)\s*-->\s*$")


def fenced_blocks(doc: Path) -> list[Block]:
    blocks: list[Block] = []
    text = doc.read_text(encoding="utf-8").splitlines()
    current: Block | None = None
    fence = ""
    last_text = ""
    for number, line in enumerate(text, start=1):
        if current is None:
            match = FENCE.match(line)
            if match:
                fence = match.group(1)
                marker = FILE_MARKER.match(last_text)
                current = Block(doc, number, match.group(2).lower(), [], marker.group(1) if marker else None)
            elif line.strip():
                last_text = line
            continue
        if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            blocks.append(current)
            current = None
            last_text = ""
            continue
        current.lines.append((number, line))
    assert current is None, f"{doc.name}: code block opened at line {current.line} is never closed"
    return blocks


def prose(doc: Path) -> str:
    """The document without its fenced blocks and inline code (links inside code are not links)."""
    kept: list[str] = []
    inside = ""
    for line in doc.read_text(encoding="utf-8").splitlines():
        match = FENCE.match(line)
        if not inside and match:
            inside = match.group(1)
            continue
        if inside:
            if line.strip().startswith(inside) and not line.strip().strip(inside[0]):
                inside = ""
            continue
        kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def rel(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------- doc commands


@dataclass
class DocCommand:
    doc: str
    line: int
    text: str
    script: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stdin_file: str | None = None
    stdin_text: str | None = None
    expected_exit: int = 0

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


EXIT_TAG = re.compile(r"\s#\s*exit\s+(\d+)\s*$")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
RUNNERS = ([], ["uv", "run"], ["uv", "run", "python"], ["python"], ["python3"])
UNSUPPORTED = {">", ">>", "2>", "2>&1", "&>", "&&", "||", ";", "&", "|"}


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """Join continuation lines: a trailing backslash (sh) or backtick (PowerShell)."""
    joined: list[tuple[int, str]] = []
    cont = "`" if block.lang in POWERSHELL_LANGS else "\\"
    start, parts = 0, []
    for number, raw in block.lines:
        line = raw.rstrip()
        if block.lang == "console" and not parts:
            if not line.lstrip().startswith("$ "):
                continue  # output, not a command
            line = line.lstrip()[2:]
        if not parts:
            start = number
        if line.endswith(cont):
            parts.append(line[:-1].rstrip())
            continue
        parts.append(line.strip() if parts else line)
        joined.append((start, " ".join(p.strip() for p in parts)))
        parts = []
    if parts:
        joined.append((start, " ".join(p.strip() for p in parts)))
    return joined


def parse_command(doc: Path, number: int, text: str) -> DocCommand:
    match = EXIT_TAG.search(text)
    expected = int(match.group(1)) if match else 0
    tokens = shlex.split(text[: match.start()] if match else text, comments=True)
    env: dict[str, str] = {}
    stdin_file = stdin_text = None
    if "|" in tokens:  # a producer piped into the command: feed its output as stdin
        cut = tokens.index("|")
        producer, tokens = tokens[:cut], tokens[cut + 1 :]
        if producer and producer[0] in ("cat", "Get-Content", "type", "gc") and len(producer) >= 2:
            stdin_file = next(t for t in producer[1:] if not t.startswith("-"))
        elif producer and producer[0] in ("echo", "Write-Output", "printf"):
            stdin_text = " ".join(producer[1:]) + "\n"
        else:
            raise AssertionError(f"{rel(doc)}:{number}: cannot feed stdin from {' '.join(producer)!r}")
    while tokens and ENV_ASSIGNMENT.fullmatch(tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    index = next(i for i, t in enumerate(tokens) if t.replace("\\", "/").removeprefix("./") in SCRIPTS)
    runner, script, args = tokens[:index], tokens[index].replace("\\", "/").removeprefix("./"), tokens[index + 1 :]
    assert runner in RUNNERS, f"{rel(doc)}:{number}: run it with 'uv run', not {' '.join(runner)!r}"
    if "<" in args:
        at = args.index("<")
        stdin_file = args[at + 1]
        del args[at : at + 2]
    bad = UNSUPPORTED.intersection(args)
    assert not bad, f"{rel(doc)}:{number}: shell syntax {sorted(bad)} is not supported in tested commands"
    return DocCommand(rel(doc), number, text, SCRIPTS[script], args, env, stdin_file, stdin_text, expected)


def doc_commands() -> list[DocCommand]:
    commands = []
    for doc in DOC_FILES:
        for block in fenced_blocks(doc):
            if block.lang not in SHELL_LANGS:
                continue
            for number, text in logical_lines(block):
                stripped = text.strip()
                if not stripped or stripped.startswith("#") or stripped.lower().startswith("$env:"):
                    continue
                if any(name in stripped.replace("\\", "/") for name in SCRIPTS):
                    commands.append(parse_command(doc, number, stripped))
    return commands


def doc_fixture_files() -> dict[str, str]:
    """Files shown in the docs under a <!-- file: NAME --> marker; the same name must not differ."""
    files: dict[str, tuple[str, str]] = {}
    for doc in DOC_FILES:
        for block in fenced_blocks(doc):
            if block.file_name is None:
                continue
            content = "\n".join(text for _, text in block.lines) + "\n"
            where = f"{rel(doc)}:{block.line}"
            if block.file_name in files:
                assert files[block.file_name][0] == content, (
                    f"{block.file_name} differs between {files[block.file_name][1]} and {where}"
                )
            files[block.file_name] = (content, where)
    return {name: content for name, (content, _) in files.items()}


COMMANDS = doc_commands()
FIXTURES = doc_fixture_files()


def test_docs_show_commands() -> None:
    """Guards the collector itself: if it found nothing, every doc-command test would silently vanish."""
    assert len(COMMANDS) >= 20
    docs = {c.doc for c in COMMANDS}
    assert {"README.md", "SKILL.md"} <= docs
    assert {"notes.txt", "params.json", "requests.jsonl"} <= set(FIXTURES)


def test_command_parser() -> None:
    """Continuations, exit tags, stdin redirection and pipes, environment prefixes."""
    doc = ROOT / "README.md"
    sh = Block(
        doc,
        1,
        "bash",
        [(2, "uv run scripts/poe_request_orchestrator.py --mode llm \\"), (3, "  --prompt - < notes.txt")],
    )
    ps = Block(
        doc,
        1,
        "powershell",
        [(2, "Get-Content notes.txt -Raw | uv run scripts/poe_request_orchestrator.py `"), (3, "  --prompt -")],
    )
    assert logical_lines(sh) == [(2, "uv run scripts/poe_request_orchestrator.py --mode llm --prompt - < notes.txt")]
    ((number, text),) = logical_lines(ps)
    piped = parse_command(doc, number, text)
    assert (piped.args, piped.stdin_file) == (["--prompt", "-"], "notes.txt")
    cmd = parse_command(
        doc, 5, 'POE_API_KEY=x uv run scripts/generate_nano_banana_image.py --prompt "A b" --out o.json  # exit 3'
    )
    assert (cmd.env, cmd.args, cmd.expected_exit) == ({"POE_API_KEY": "x"}, ["--prompt", "A b", "--out", "o.json"], 3)
    redirected = parse_command(doc, 6, logical_lines(sh)[0][1])
    assert (redirected.args, redirected.stdin_file) == (["--mode", "llm", "--prompt", "-"], "notes.txt")
    with pytest.raises(AssertionError, match="not supported"):
        parse_command(doc, 7, "uv run scripts/poe_request_orchestrator.py --version > v.txt")


def option_value(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def doc_env(cmd: DocCommand) -> dict[str, str]:
    """The variables a doc line sets, as they apply to the test: the base URL is always the emulator's,
    and the key of a hand-started emulator becomes the fixture's key (a deliberately wrong key stays)."""
    env = {k: v for k, v in cmd.env.items() if k not in ("POE_BASE_URL", "POE_CACHE_DIR")}
    if env.get("POE_API_KEY") in (DOC_EMULATOR_KEY, EMULATOR_KEY):
        del env["POE_API_KEY"]
    return env


def command_env(cmd: DocCommand, emulator: PoeEmulator, cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POE_")}
    env["POE_API_KEY"] = EMULATOR_KEY
    env.update(doc_env(cmd))
    env["POE_BASE_URL"] = emulator.base_url
    env["POE_CACHE_DIR"] = str(cache_dir)
    env["COLUMNS"] = "160"
    return env


def command_args(cmd: DocCommand, emulator: PoeEmulator) -> list[str]:
    args = []
    for arg in cmd.args:
        for url in DOC_BASE_URLS:
            arg = arg.replace(url, emulator.base_url)
        args.append(arg)
    mode = option_value(args, "--mode", "-m")
    if cmd.script.name == "poe_request_orchestrator.py" and (mode == "video" or "--batch" in args):
        # Video jobs poll every 5 s by default and the emulator needs 2 polls; the docs keep the real
        # default, the test alone appends --poll-interval 0 (the last value given wins).
        args += ["--poll-interval", "0"]
    return args


def run_cli(script: Path, args: list[str], cwd: Path, env: dict[str, str], stdin: bytes | None = None):
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=60,
    )


# Identical commands (the quick start is in SKILL.md and README.md) run once per session: the emulator is
# fresh for every test, so a second run could only repeat the first one's answer. Under pytest-xdist the
# workers share the session's temporary root, where a passed command leaves a marker file.
_PASSED: set[str] = set()


def passed_marker(cmd: DocCommand, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path | None]:
    key = repr((cmd.script.name, cmd.args, sorted(doc_env(cmd).items()), cmd.stdin_file, cmd.stdin_text))
    digest = hashlib.sha256(f"{key} exit {cmd.expected_exit}".encode()).hexdigest()[:24]
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return digest, None
    return digest, tmp_path_factory.getbasetemp().parent / "doc-commands-passed" / digest


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.id for c in COMMANDS])
def test_doc_command_runs(
    cmd: DocCommand, emulator: PoeEmulator, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    digest, marker = passed_marker(cmd, tmp_path_factory)
    if digest in _PASSED or (marker is not None and marker.exists()):
        return
    work = tmp_path / "work"
    work.mkdir()
    for name, content in FIXTURES.items():
        (work / name).write_text(content, encoding="utf-8")
    (work / "photo.png").write_bytes(TINY_PNG)
    env = command_env(cmd, emulator, tmp_path / "cache")
    args = command_args(cmd, emulator)

    source = option_value(args, "--download-from")
    if source:  # a record to download from: make it with the real CLI first
        made = run_cli(
            SCRIPTS["scripts/poe_request_orchestrator.py"],
            ["--mode", "image", "--model", "nano-banana-2", "--prompt", "A fox", "--out", source, "-q"],
            work,
            env,
        )
        assert made.returncode == 0, made.stderr.decode()

    stdin = None
    if cmd.stdin_file:
        stdin = (work / cmd.stdin_file).read_bytes()
    elif cmd.stdin_text is not None:
        stdin = cmd.stdin_text.encode()
    proc = run_cli(cmd.script, args, work, env, stdin)
    stdout, stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    shown = f"\n$ {cmd.text}\nexit {proc.returncode}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
    assert proc.returncode == cmd.expected_exit, f"expected exit {cmd.expected_exit}{shown}"
    assert EMULATOR_KEY not in stdout + stderr, "the API key was printed" + shown

    record_path = option_value(args, "--out", "-o") or source
    sends = not ({"--dry-run", "--batch", "--list-models", "--describe-model"} & set(args))
    if record_path and sends:
        path = work / record_path
        if cmd.expected_exit == 0:
            assert path.is_file(), f"no record at {record_path}" + shown
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert EMULATOR_KEY not in text, "the API key is in the record"
            record = json.loads(text)
            jsonschema.validate(record, RECORD_SCHEMA)
            assert record["ok"] is (cmd.expected_exit == 0), shown
    _PASSED.add(digest)
    if marker is not None:
        marker.parent.mkdir(exist_ok=True)
        marker.touch()


# --------------------------------------------------------------------------- links


def github_slug(heading: str) -> str:
    text = re.sub(r"[`*_~]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(doc).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@pytest.mark.parametrize("doc", DOC_FILES, ids=[rel(d) for d in DOC_FILES])
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # http:, https:, mailto:
        path_part, _, anchor = target.partition("#")
        file = (doc.parent / path_part).resolve() if path_part else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {rel(file)}")
    assert not broken, f"{rel(doc)}: " + "; ".join(broken)


# --------------------------------------------------------------------------- SKILL.md front matter


def front_matter(text: str) -> tuple[dict[str, object], str]:
    """Our own reading of the front matter: top-level 'key: value' lines and one level of nesting."""
    lines = text.splitlines()
    assert lines[0] == "---", "SKILL.md must start with a --- line"
    end = lines.index("---", 1)
    data: dict[str, object] = {}
    current: str | None = None
    for line in lines[1:end]:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t":
            assert current is not None, f"indented line without a key: {line!r}"
            key, _, value = line.strip().partition(":")
            nested = data.setdefault(current, {})
            assert isinstance(nested, dict), f"{current} mixes a value and nested keys"
            nested[key.strip()] = value.strip().strip("\"'")
            continue
        key, sep, value = line.partition(":")
        assert sep, f"not a 'key: value' line: {line!r}"
        current = key.strip()
        assert current not in data, f"duplicate key {current}"
        data[current] = value.strip().strip("\"'") if value.strip() else {}
    return data, "\n".join(lines[end + 1 :])


def test_skill_front_matter_own_rules() -> None:
    data, _ = front_matter((ROOT / "SKILL.md").read_text(encoding="utf-8"))
    allowed = {"name", "description", "license", "compatibility", "metadata", "allowed-tools"}
    assert set(data) <= allowed, f"unexpected keys: {set(data) - allowed}"
    name, description = data.get("name"), data.get("description")
    assert name == SKILL_NAME
    assert isinstance(name, str) and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) and len(name) <= 64
    assert isinstance(description, str) and 1 <= len(description.strip()) <= 1024
    assert re.search(r"\buse it when\b", description, re.I), "the description must say when to use it"
    if "compatibility" in data:
        assert isinstance(data["compatibility"], str) and 1 <= len(data["compatibility"]) <= 500
    if "metadata" in data:
        assert isinstance(data["metadata"], dict) and all(isinstance(v, str) for v in data["metadata"].values())


def test_skill_front_matter_reference_validator(tmp_path: Path) -> None:
    # skills-ref insists that the folder is named like the skill; the checkout may be named otherwise.
    skill_dir = tmp_path / SKILL_NAME
    skill_dir.mkdir()
    shutil.copy(ROOT / "SKILL.md", skill_dir / "SKILL.md")
    shutil.copytree(ROOT / "references", skill_dir / "references")
    assert skills_ref.validate(skill_dir) == []
    props = skills_ref.read_properties(skill_dir)
    ours, _ = front_matter((ROOT / "SKILL.md").read_text(encoding="utf-8"))
    assert (props.name, props.description, props.compatibility) == (
        ours["name"],
        ours["description"],
        ours.get("compatibility"),
    ), "our front-matter reading disagrees with skills-ref's"


def test_skill_body_is_short_and_links_every_reference() -> None:
    _, body = front_matter((ROOT / "SKILL.md").read_text(encoding="utf-8"))
    assert len(body.splitlines()) < 500
    assert len(body.split()) < 5000
    linked = set(re.findall(r"\]\((references/[^)#\s]+)", body))
    for ref in sorted((ROOT / "references").iterdir()):
        if ref.suffix in (".md", ".json"):
            assert f"references/{ref.name}" in linked, f"SKILL.md does not link references/{ref.name}"


# --------------------------------------------------------------------------- quick start


def shell_lines(doc: Path) -> list[str]:
    return [t.strip() for b in fenced_blocks(doc) if b.lang in SHELL_LANGS for _, t in logical_lines(b)]


@pytest.mark.parametrize("doc", ["SKILL.md", "README.md"])
def test_quick_start_commands_are_shown(doc: str) -> None:
    lines = shell_lines(ROOT / doc)
    for command in QUICK_START:
        assert command in lines, f"{doc} lacks the quick-start command: {command}"


def test_readme_quick_start_is_two_commands() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    match = re.search(r"^## Quick start\s*$(.*?)(?=^## )", text, re.M | re.S)
    assert match, "README.md needs a '## Quick start' section"
    section_start = text[: match.start()].count("\n") + 1
    section_end = section_start + match.group(0).count("\n")
    blocks = [b for b in fenced_blocks(readme) if section_start <= b.line <= section_end]
    assert len(blocks) == 1, "the Quick start section has one fenced block"
    commands = [t.strip() for _, t in blocks[0].lines if t.strip() and not t.strip().startswith("#")]
    assert commands == [QUICK_START[0], "uv run pytest"]


# --------------------------------------------------------------------------- tables generated from code


def exit_code_table(doc: Path) -> dict[str, int]:
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`([A-Z_]+)`\s*\|", doc.read_text(encoding="utf-8"), re.M)
    table: dict[str, int] = {}
    for number, name in rows:
        assert name not in table, f"{rel(doc)}: {name} appears twice"
        table[name] = int(number)
    return table


@pytest.mark.parametrize("doc", ["references/error-handling.md", "SKILL.md"])
def test_exit_code_table_matches_enum(doc: str) -> None:
    assert exit_code_table(ROOT / doc) == {member.name: int(member) for member in orchestrator.ExitCode}


def test_parameter_mapping_is_the_codes_table() -> None:
    text = (ROOT / "references" / "parameter-mapping.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- mapping:start -->\n(.*?)<!-- mapping:end -->", text, re.S)
    assert match, "parameter-mapping.md needs the <!-- mapping:start --> ... <!-- mapping:end --> markers"
    assert match.group(1).strip("\n") == orchestrator.render_parameter_mapping().strip("\n"), (
        "regenerate it: uv run scripts/poe_request_orchestrator.py --parameter-mapping"
    )
