"""docs/adding-a-task.md, followed literally: its task file, copied out of the page into a temporary package and
registered by its entry-point line alone (no file of bertkit's touched), is trained, evaluated, predicted and served
by the real `bertkit` commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from bench._serving import Server

from bertkit import Tokenizer
from bertkit.errors import BertkitError

RECIPE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-task.md"
PACKAGE = "toy_tasks"
WEATHER = ["rain again tomorrow", "sunny and warm", "snow on the hills", "strong wind tonight", "cloudy and cold"]
OTHER = ["the football match", "a plate of pasta", "she plays the piano", "the train is late", "a book on chess"]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", RECIPE.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> tuple[Path, str, str]:
    """(the directory holding the package, the task's name, its module): the page's task file as the package's one
    module, and the page's entry-point line as an installer writes it into the package's dist-info."""
    root = tmp_path_factory.mktemp("site")
    task_file = _blocks("python")[0]
    entry_points = tomllib.loads(_blocks("toml")[0])["project"]["entry-points"]["bertkit.tasks"]
    ((name, module),) = entry_points.items()  # one line
    module = module.replace("my_package", PACKAGE)
    (root / PACKAGE).mkdir()
    (root / PACKAGE / "__init__.py").write_text("")
    (root / PACKAGE / f"{module.rsplit('.', 1)[1]}.py").write_text(task_file, encoding="utf-8")
    info = root / f"{PACKAGE}-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[bertkit.tasks]\n{name} = {module}\n")
    return root, name, module


def _env(root: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _bertkit(root: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "bertkit.cli", *args], env=_env(root), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_recipe_trains_evaluates_predicts_and_serves_a_new_task(package, tmp_path):
    root, name, _ = package
    data = tmp_path / "train.jsonl"
    rows = [{"text": t, "label": "yes"} for t in WEATHER] + [{"text": t, "label": "no"} for t in OTHER]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 4), encoding="utf-8")
    Tokenizer.train(WEATHER + OTHER, vocab_size=80, min_frequency=1).save_pretrained(tmp_path / "vocab")

    out = _bertkit(root, "finetune", "--task", name, "--train", str(data), "--eval", str(data), "--tokenizer",
                   str(tmp_path / "vocab"), "--model-size", "tiny", "--max-steps", "40", "--lr", "3e-3",
                   "--batch-size", "8", "--warmup", "2", "--no-progress", "--no-bf16",
                   "--output-dir", str(tmp_path / "run"))
    assert "evaluation: accuracy 1.0000" in out
    model = tmp_path / "run" / "model"
    assert json.loads((model / "task.json").read_text())["task"] == name

    metrics = json.loads(_bertkit(root, "evaluate", str(model), "--data", str(data), "--device", "cpu"))
    assert metrics["task"] == name and metrics["accuracy"] == 1.0

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"text": "sunny and warm"}\nthe football match\n', encoding="utf-8")
    _bertkit(root, "predict", str(model), "--input", str(inputs), "--output", str(tmp_path / "out.jsonl"),
             "--device", "cpu", "--no-progress")
    predictions = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [p["label"] for p in predictions] == ["yes", "no"]

    server = Server(model, "--device", "cpu", env=_env(root))
    try:
        status, health, _ = server.get("/health")
        assert status == 200 and health["task"] == name and health["spec"]["example"] == {"text": "rain again tomorrow"}
        status, body, _ = server.post("/predict", {"inputs": ["snow on the hills", {"text": "a plate of pasta"}]})
        assert status == 200 and [p["label"] for p in body["predictions"]] == ["yes", "no"]
    finally:
        server.stop()


def test_register_task_adds_a_task_in_this_process_and_refuses_a_taken_name(package, monkeypatch):
    import bertkit.tasks as tasks

    root, name, module = package
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))  # this test's registrations end with it
    tasks.register_task(name, module)
    tasks.register_task(name, module)  # the same again is no change
    assert tasks.task_spec(name).name == name and name in tasks.trainable_tasks()
    with pytest.raises(BertkitError, match="already registered"):
        tasks.register_task("classification", module)
