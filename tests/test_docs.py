"""The documentation stays true: every Python snippet of README.md and docs/*.md runs, the README's file map names
every module in src/ (and nothing else there), and every generated table has its markers in exactly one page."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


# Its blocks are a module file and a registry line, not snippets: tests/test_adding_a_task.py runs them as such.
RUN_ELSEWHERE = {REPO / "docs" / "adding-a-task.md"}


def snippets() -> list:
    """Each ```python block as a pytest param named `page:line`."""
    found = []
    for page in PAGES:
        if page in RUN_ELSEWHERE:
            continue
        text = page.read_text(encoding="utf-8")
        for match in PYTHON_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(pytest.param(match.group(1), id=f"{page.relative_to(REPO)}:{line}"))
    return found


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The names the snippets may use: `bert_dir`, a tiny pre-trained checkpoint (MLM + NSP heads, random weights),
    and `classifier_dir`, a tiny fine-tuned sentiment classifier (random weights, as `finetune` writes it)."""
    from bertkit import BertConfig, BertForPreTraining, Tokenizer
    from tests.conftest import randomize_
    from tests.reliability.tiny_checkpoints import make_classifier

    root = tmp_path_factory.mktemp("docs")
    tok = Tokenizer.train(["北京欢迎你", "今天天气很好", "质量很好，非常满意", "a second text", "an optional pair"],
                          vocab_size=80, min_frequency=1)
    model = randomize_(BertForPreTraining(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                     intermediate_size=37, vocab_size=len(tok),
                                                     pad_token_id=tok.pad_token_id)))
    model.save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    return {"bert_dir": str(root / "bert"), "classifier_dir": str(make_classifier(root / "classifier"))}


@pytest.mark.parametrize("code", snippets())
def test_snippet_runs(code: str, checkpoints: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                      ) -> None:
    monkeypatch.chdir(tmp_path)  # whatever a snippet writes lands here
    exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__", **checkpoints})


def test_the_readme_shows_the_python_api() -> None:
    readme = [s.values[0] for s in snippets() if s.id.startswith("README.md:")]
    assert readme, "README.md has no ```python snippet"
    assert any("bertkit.quantize(" in code for code in readme), "the README's snippets do not call bertkit.quantize"


def file_map() -> set[str]:
    """The paths in the first column of the README's file map (a cell may name several, comma-separated)."""
    text = (REPO / "README.md").read_text(encoding="utf-8").split("## File map", 1)[1]
    paths = set()
    for row in text.splitlines():
        if row.startswith("| `"):
            paths.update(re.findall(r"`([^`]+)`", row.split(" | ", 1)[0]))
    return paths


def test_the_file_map_names_every_module_and_only_those() -> None:
    listed = {p for p in file_map() if p.startswith("src/")}
    modules = {str(p.relative_to(REPO)) for p in (REPO / "src" / "bertkit").rglob("*.py")}
    modules |= {str(p.relative_to(REPO)) for p in (REPO / "src" / "bertkit" / "web").glob("*.html")}
    assert not modules - listed, f"modules missing from the README's file map: {sorted(modules - listed)}"
    assert not listed - modules, f"the README's file map names files that do not exist: {sorted(listed - modules)}"


def test_every_generated_table_has_its_markers_in_one_page() -> None:
    spec = importlib.util.spec_from_file_location("readme_tables", REPO / "bench" / "readme_tables.py")
    assert spec is not None and spec.loader is not None
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    assert tables.documents(REPO) == PAGES
    texts = {page.name: page.read_text(encoding="utf-8") for page in PAGES}
    for name in tables.TABLES:
        holders = [page for page, text in texts.items() if tables.marker(name).search(text)]
        assert len(holders) == 1, f"<!-- {name} --> ... <!-- /{name} --> should be in one page, found in {holders}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_pages_do_not_narrate_development(page: Path) -> None:
    """The documentation says what is true now; how it came to be belongs in git history."""
    text = page.read_text(encoding="utf-8")
    found = re.findall(r".{0,40}(?:\bsessions?\b|\bissue \d+|re-measured|where it was \d).{0,40}", text, re.I)
    assert not found, f"{page.name} narrates development: {found}"


def test_bench_stands_on_src_only():
    """A benchmark runs from a checkout without the test suite's helpers: nothing under bench/ imports tests."""
    found = [f"{path.relative_to(REPO)}:{number}" for path in sorted((REPO / "bench").glob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if re.match(r"\s*(from tests[.\s]|import tests\b)", line)]
    assert not found, found
