"""The ceiling of the batch benchmark: the same N POST /chat/completions from C threads over one raw httpx
client, with no catalogue, records, retries or rate gate. Prints the answers' count and the time they
took inside the process as JSON.

    POE_BASE_URL=... POE_API_KEY=... python benchmarks/raw_httpx_batch.py N C MODEL

What this reaches against the emulator on this machine bounds what the orchestrator can reach.
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402


def main() -> int:
    n, concurrency, model = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    base_url = os.environ.get("POE_BASE_URL", "https://api.poe.com/v1").rstrip("/")
    headers = {"Authorization": f"Bearer {os.environ['POE_API_KEY']}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(headers=headers, limits=limits, timeout=600.0) as client:

        def one(i: int) -> str:
            body = {"model": model, "messages": [{"role": "user", "content": f"Request {i}: say hi"}], "stream": False}
            response = client.post(f"{base_url}/chat/completions", json=body)
            response.raise_for_status()
            return str(response.json()["choices"][0]["message"]["content"])

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            answers = list(pool.map(one, range(1, n + 1)))
        elapsed = time.perf_counter() - started
    print(json.dumps({"answers": len(answers), "elapsed_s": elapsed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
