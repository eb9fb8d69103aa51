#!/usr/bin/env python3
"""The old image-only interface, kept working as a thin wrapper over the orchestrator.

    uv run scripts/generate_nano_banana_image.py --prompt "A cat in a hat" --aspect-ratio "4:3" --seed 42 \
        --out "outputs/cat.json"

It translates its options into one orchestrator call (mode image, model nano-banana-2 unless --model
says otherwise) and runs it in-process: same record format, same exit codes, same stdout. Any other
orchestrator option (--base-url, --download, --json, --dry-run, ...) is passed through unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import poe_request_orchestrator as orchestrator

DEFAULT_MODEL = "nano-banana-2"
EXAMPLES = """\
\b
Examples:
  uv run scripts/generate_nano_banana_image.py --prompt "A cat" --aspect-ratio 4:3 --seed 42 --out outputs/cat.json
  uv run scripts/generate_nano_banana_image.py --prompt "A lighthouse" --model nano-banana-pro --download

Any orchestrator option may follow (see poe_request_orchestrator.py --help). Exit codes are the
orchestrator's: 0 ok, 2 bad input, 3 key, 4 points, 5 rejected, 6 rate limited, 7 server, 8 network,
9 no media, 10 download failed, 130 cancelled.
"""

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)


@app.command(
    help="Generate one image with a nano-banana model (a thin wrapper over poe_request_orchestrator.py).",
    epilog=EXAMPLES,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def generate(
    ctx: typer.Context,
    prompt: str = typer.Option(..., "--prompt", "-p", help="What to draw ('-' reads stdin)."),
    aspect_ratio: str | None = typer.Option(None, "--aspect-ratio", help="For example 1:1, 4:3, 16:9."),
    seed: int | None = typer.Option(None, "--seed", help="Sent when the model declares a seed; always recorded."),
    out: str | None = typer.Option(None, "--out", "-o", help="Where to write the JSON record."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="The image model."),
) -> None:
    argv = orchestrator_argv(prompt, aspect_ratio, seed, out, model, list(ctx.args))
    raise typer.Exit(orchestrator.main(argv))


def orchestrator_argv(
    prompt: str, aspect_ratio: str | None, seed: int | None, out: str | None, model: str, extra: list[str]
) -> list[str]:
    """The orchestrator command line equivalent to the wrapper's options."""
    argv = ["--mode", "image", "--model", model, "--prompt", prompt]
    if aspect_ratio:
        argv += ["--param", f"aspect_ratio={aspect_ratio}"]
    if seed is not None:
        argv += ["--label", f"seed={seed}"]
        if model_declares(model, "seed", extra):
            argv += ["--param", f"seed={seed}"]
        else:
            print(
                f"note: {model} does not declare a seed parameter; seed {seed} is recorded (labels.seed) but not sent",
                file=sys.stderr,
            )
    if out:
        argv += ["--out", out]
    return [*argv, "--label", "wrapper=generate_nano_banana_image", *extra]


def model_declares(model: str, name: str, extra: list[str]) -> bool:
    """Does the catalogue declare this parameter for the model? (True when the catalogue cannot be read.)"""
    settings = orchestrator.Settings(base_url=_option(extra, "--base-url") or orchestrator.env_base_url())
    with orchestrator.make_client(settings) as client:
        catalogue = orchestrator.load_catalogue(client, settings, orchestrator.Ui(quiet=True))
    info = catalogue.find(model) if catalogue else None
    if info is None or info.parameters is None:
        return catalogue is None
    return name in info.parameters


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    return orchestrator.run_command(app, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
