"""Run a script as ``__main__`` and write the modules it loaded (sys.modules at exit) to a JSON file.

    python benchmarks/module_probe.py OUT.json scripts/poe_request_orchestrator.py --help

Entries set to None (declared absent, as the orchestrator does for ``httpx._main``) are not loaded
and are left out. The probe itself adds only json, os, runpy and sys (and what they import).
"""

import json
import os
import runpy
import sys


def main() -> None:
    out, script = sys.argv[1], sys.argv[2]
    sys.argv = sys.argv[2:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    code: object = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    finally:
        loaded = sorted(name for name, module in sys.modules.items() if module is not None)
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"exit_code": code, "modules": loaded}, f)
    sys.exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    main()
