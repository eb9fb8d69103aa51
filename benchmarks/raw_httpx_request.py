"""The baseline of the start-up benchmark: one POST /chat/completions with raw httpx, the answer on stdout.

    POE_BASE_URL=... POE_API_KEY=... python benchmarks/raw_httpx_request.py MODEL PROMPT [--plain-import]

It sends the body the orchestrator sends for ``--mode llm --model MODEL --prompt PROMPT`` and nothing
else: no catalogue, no record, no retries. Like the orchestrator it declares httpx's optional
command-line client absent (``httpx._main``: click, pygments, rich), so the two pay the same price for
httpx itself; ``--plain-import`` keeps a bare ``import httpx`` instead (the naive script).
"""

import os
import sys

if "--plain-import" not in sys.argv:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--plain-import"]
    model, prompt = args[0], args[1]
    base_url = os.environ.get("POE_BASE_URL", "https://api.poe.com/v1").rstrip("/")
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": False}
    headers = {"Authorization": f"Bearer {os.environ['POE_API_KEY']}"}
    response = httpx.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=600.0)
    response.raise_for_status()
    sys.stdout.write(response.json()["choices"][0]["message"]["content"] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
