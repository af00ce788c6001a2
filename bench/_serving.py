"""The serving harness the server benchmarks and tests share: a real `bertkit serve` process on a free loopback
port (`Server`), a tiny trained sentence-pair classifier, and checkpoints of any task with random weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from bertkit import Tokenizer
from bertkit.tasks import classification
from bertkit.train import TrainConfig


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (LayerNorm weights and biases too), so a swapped or dropped
    parameter cannot hide behind an identity initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.05
            if name.endswith("LayerNorm.weight") or name.endswith("norm.weight"):
                param.copy_(1.0 + noise)
            else:
                param.copy_(noise * 2)
    return model


def make_pair_checkpoint(root: Path, max_seq_len: int = 64) -> Path:
    """A two-class sentence-pair classifier (RTE-style TSV) trained for a few steps: for serving, not accuracy."""
    rows = ["sentence1\tsentence2\tlabel"]
    for i, (a, b) in enumerate([("the cat sat", "a cat sat"), ("dogs run fast", "the dog is slow"),
                                ("it is raining", "the street is wet"), ("he won the race", "he lost")] * 6):
        rows.append(f"{a}\t{b}\t{i % 2}")
    data = root / "train.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    Tokenizer.train([data], vocab_size=80, min_frequency=1).save_pretrained(root / "vocab")
    config = TrainConfig(output_dir=str(root / "run"), batch_size=8, max_steps=10, lr=3e-3, warmup=2,
                         progress=False, bf16=False)
    classification.finetune(data, config, fmt="rte", tokenizer=root / "vocab", model_size="tiny",
                            max_seq_len=max_seq_len)
    return root / "run" / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bertkit serve` in a child process; stopped on exit."""

    def __init__(self, checkpoint: Path, *extra: str, env: dict[str, str] | None = None, auto_compile: bool = False,
                 start_timeout: float = 60.0) -> None:
        """`auto_compile`: serve as `bertkit serve` does with no --compile flag (compiled int8 where `auto` compiles,
        tens of seconds to start where nothing is cached); else `--no-compile` unless `extra` says --compile."""
        if not auto_compile and not any(flag in extra for flag in ("--compile", "--no-compile")):
            extra = (*extra, "--no-compile")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # a file, not a pipe: a server that logs more than a pipe holds would block on its next write
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (open as long as the server runs)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bertkit.cli", "serve", str(checkpoint), "--port", str(self.port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        self.headers: dict[str, str] = {}  # sent with every request (e.g. an Authorization header)
        self.timeout = 60.0  # seconds a request may take before the client gives up
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.get("/health")[0] in (200, 401):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start: " + self.stop()[-2000:])

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
                ) -> tuple[int, dict, dict]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json", **self.headers, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"null"), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null"), dict(error.headers)

    def request_declaring(self, path: str, body: bytes) -> tuple[int, dict]:
        """POST that declares the whole body's length but sends only its first 1,000 bytes, then reads the answer:
        a server that refuses by Content-Length answers at once. (Sending all of a body the server will not read
        races its close: under load the client's write hits a closed socket, EPIPE, and the answer is lost.)"""
        import http.client

        connection = http.client.HTTPConnection(self.url.split("//")[1], timeout=self.timeout)
        try:
            connection.putrequest("POST", path)
            for name, value in {"Content-Type": "application/json", **self.headers,
                                "Content-Length": str(len(body))}.items():
                connection.putheader(name, value)
            connection.endheaders(body[:1000])
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, dict, dict]:
        return self.request("GET", path)

    def post(self, path: str, payload) -> tuple[int, dict, dict]:
        return self.request("POST", path, json.dumps(payload).encode())

    def stop(self) -> str:
        """Stop the server; returns everything it printed (stdout and stderr)."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        output = self.output()
        self.log.close()
        return output

    def output(self) -> str:
        """What the server has printed so far (stdout and stderr)."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


SAMPLE_TEXT = "the cat sat on the mat 北京是中国的首都 it is raining in paris 张三去上海了"


def random_checkpoint(task: str, directory: Path, max_seq_len: int = 128, preset: str = "tiny",
                      vocab_size: int | None = None) -> Path:
    """A checkpoint of `task` with random weights (no training), as its own code saves one: what it costs to
    serve, not what it predicts. fill_mask and sentence_embedding get a pre-trained (BertForPreTraining) directory;
    serve it with `--task`. `vocab_size`: the vocabulary padded with unused entries to this size (a real BERT's
    21,128 or 30,522: the MLM head's cost grows with it)."""
    from bertkit import BertConfig
    from bertkit.model import BertForPreTraining
    from bertkit.tasks import task_spec
    from bertkit.tasks.base import save_task
    from bertkit.tasks.classification import ClassificationInfo
    from bertkit.tasks.intent_slot import IntentSlotInfo
    from bertkit.tasks.multiple_choice import MultipleChoiceInfo
    from bertkit.tasks.ner import NerInfo
    from bertkit.tasks.qa import QAInfo
    from bertkit.tasks.relation import MARKERS, RelationInfo
    from bertkit.tasks.spelling import SpellingInfo
    from bertkit.tasks.triples import TriplesInfo

    tok = Tokenizer.train([SAMPLE_TEXT] * 4, vocab_size=120, min_frequency=1)
    if vocab_size is not None and vocab_size > len(tok):
        tok.save_pretrained(directory / "vocab")
        with open(directory / "vocab" / "vocab.txt", "a", encoding="utf-8") as f:
            f.writelines(f"[unused{i}]\n" for i in range(vocab_size - len(tok)))
        tok = Tokenizer.from_pretrained(directory / "vocab")
    if task == "relation":
        tok = tok.with_special_tokens(MARKERS)
    tags = ["O", "B-X", "I-X"]
    infos = {"classification": ClassificationInfo(["no", "yes"], max_seq_len),
             "ner": NerInfo(tags, max_seq_len, "bio", False, "char"),
             "intent_slot": IntentSlotInfo(["ask", "tell"], tags, max_seq_len, "bio", False, "space"),
             "relation": RelationInfo(["Other", "Cause"], max_seq_len, "semeval"),
             "spelling": SpellingInfo(max_seq_len), "triples": TriplesInfo(tags, ["p", "q"], max_seq_len, "char"),
             "qa": QAInfo(max_seq_len, 128), "multiple_choice": MultipleChoiceInfo(max_seq_len)}
    pretrained = task not in infos
    spec = None if pretrained else task_spec(task)
    extra = {} if pretrained else spec.config_extra(infos[task])
    config = BertConfig.preset(preset, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                               max_position_embeddings=max(512, max_seq_len), extra=extra)
    model = randomize_((BertForPreTraining if pretrained else spec.model)(config))
    if pretrained:
        model.save_pretrained(directory)
        tok.save_pretrained(directory)
    else:
        save_task(spec, infos[task], model, tok, directory)
    return directory
