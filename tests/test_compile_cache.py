"""`bertkit compile DIR` and the compile cache across processes: a second process compiles nothing anew, and a
corrupt cache entry is never trusted (the numbers stay those of the eager int8 model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench._serving import random_checkpoint

from bertkit.compiled import CACHE_ENV, compiler_available

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for torch.compile here")]

COMPARE = """
import sys, torch
from bertkit.predict import Predictor
texts = ["the cat sat on the mat", "it is raining in paris and the street is wet"]
compiled = Predictor(sys.argv[1], device="cpu", precision="int8", compile=True)
eager = Predictor(sys.argv[1], device="cpu", precision="int8", compile=False)
a, b = (p.predict(texts) for p in (compiled, eager))
assert [x["label"] for x in a] == [x["label"] for x in b], (a, b)
worst = max(abs(x["probabilities"][k] - y["probabilities"][k]) for x, y in zip(a, b)
            for k in x["probabilities"])
print("worst", worst)
"""


def _graphs(cache: Path) -> set[str]:
    return {str(p.relative_to(cache)) for p in (cache / "fxgraph").rglob("*") if p.is_file()}


def test_compile_fills_the_cache_a_second_process_reuses_it_and_a_corrupt_entry_is_not_trusted(tmp_path):
    checkpoint = random_checkpoint("classification", tmp_path / "ck")
    cache = tmp_path / "cache"
    env = {**os.environ, CACHE_ENV: str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=900)

    first = run("-m", "bertkit.cli", "compile", str(checkpoint))
    assert first.returncode == 0, first.stderr
    assert "one sequence" in first.stderr and "batch with padding" in first.stderr and str(cache) in first.stderr
    graphs = _graphs(cache)
    assert graphs, "nothing was cached"
    second = run("-m", "bertkit.cli", "compile", str(checkpoint))
    assert second.returncode == 0, second.stderr
    assert _graphs(cache) == graphs  # every graph came from the cache: none compiled anew
    for name in graphs:  # every cached graph overwritten with garbage
        (cache / name).write_bytes(b"\\x00 not a compiled graph")
    compared = run("-c", COMPARE, str(checkpoint))
    assert compared.returncode == 0, compared.stderr
    assert float(compared.stdout.split()[-1]) < 1e-4
