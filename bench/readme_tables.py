"""Copy the benchmark tables from bench/results/*.md into README.md and docs/*.md, between `<!-- name -->` markers.

    .venv/bin/python bench/readme_tables.py

Each section `<!-- tasks -->` ... `<!-- /tasks -->` in README.md or a page of docs/ is replaced by
bench/results/tasks.md (likewise every name in TABLES), so the documentation shows exactly what the last benchmark
run wrote, in whichever file the table lives.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("tasks", "speed", "speed_amx", "malloc", "int8_vnni", "int8_amx", "int8_keep", "int8_ops", "serve_start",
          "int8_gelu", "int8_accuracy", "serve_load", "attention", "parity", "scale", "pretrain_zh", "serve_hostile",
          "serve_costly_tiny", "serve_costly_base", "fuzz_server", "fuzz_readers", "prepare_shapes",
          "grad_checkpointing", "search", "search_lcqmc", "distill", "colocated")


def documents(root: Path = ROOT) -> list[Path]:
    """The files whose markers are filled: README.md and every docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def marker(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)


def main() -> int:
    texts = {path: path.read_text(encoding="utf-8") for path in documents() if path.is_file()}
    for name in TABLES:
        pattern = marker(name)
        holders = [path for path, text in texts.items() if pattern.search(text)]
        if not holders:
            print(f"no <!-- {name} --> section in README.md or docs/; skipped", file=sys.stderr)
            continue
        source = ROOT / "bench" / "results" / f"{name}.md"
        if not source.is_file():
            print(f"{source} not found (run its benchmark first); skipped", file=sys.stderr)
            continue
        body = source.read_text(encoding="utf-8").strip()
        for path in holders:
            texts[path] = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), texts[path])
    for path, text in texts.items():
        if path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
