"""Test helpers: a tiny fine-tuned NER checkpoint and a real `bertkit serve` process on a free loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bertkit import Tokenizer
from bertkit.tasks import ner
from bertkit.train import TrainConfig


def make_ner_checkpoint(root: Path) -> Path:
    lines = []
    for name, place in [("张三", "北京"), ("李四", "上海"), ("王五", "广州")] * 6:
        sentence = f"{name}去{place}了"
        tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]
        lines += [f"{c} {t}" for c, t in zip(sentence, tags, strict=True)] + [""]
    data = root / "train.txt"
    data.write_text("\n".join(lines), encoding="utf-8")
    Tokenizer.train([data], vocab_size=60, min_frequency=1).save_pretrained(root / "vocab")
    config = TrainConfig(output_dir=str(root / "run"), batch_size=8, max_steps=40, lr=3e-3, warmup=2,
                         progress=False, bf16=False)
    ner.finetune(data, config, tokenizer=root / "vocab", model_size="tiny")
    return root / "run" / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bertkit serve` in a child process; stopped on exit."""

    def __init__(self, checkpoint: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bertkit.cli", "serve", str(checkpoint), "--port", str(self.port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start: " + self.process.stdout.read().decode(errors="replace")[-2000:])

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
                ) -> tuple[int, dict, dict]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null"), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null"), dict(error.headers)

    def get(self, path: str) -> tuple[int, dict, dict]:
        return self.request("GET", path)

    def post(self, path: str, payload) -> tuple[int, dict, dict]:
        return self.request("POST", path, json.dumps(payload).encode())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
