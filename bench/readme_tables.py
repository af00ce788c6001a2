"""Copy the benchmark tables from bench/results/*.md into README.md, between `<!-- name -->` markers.

    .venv/bin/python bench/readme_tables.py

Each README section `<!-- tasks -->` ... `<!-- /tasks -->` is replaced by bench/results/tasks.md (likewise every
name in TABLES), so the README shows exactly what the last benchmark run wrote.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("tasks", "speed", "speed_amx", "malloc", "int8", "int8_keep", "int8_gelu", "int8_accuracy", "serve_load",
          "scale", "pretrain_zh", "serve_hostile", "serve_costly_tiny", "serve_costly_base", "fuzz_server",
          "fuzz_readers", "prepare_shapes")


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    for name in TABLES:
        source = ROOT / "bench" / "results" / f"{name}.md"
        pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
        if not pattern.search(text):
            print(f"README.md has no <!-- {name} --> section; skipped", file=sys.stderr)
            continue
        if not source.is_file():
            print(f"{source} not found (run its benchmark first); skipped", file=sys.stderr)
            continue
        body = source.read_text(encoding="utf-8").strip()
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    readme.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
