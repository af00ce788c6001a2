"""Tiny fine-tuned checkpoints built in milliseconds (random weights, no training) for the checkpoint tests."""

from __future__ import annotations

from pathlib import Path

from bertkit import BertConfig, Tokenizer
from bertkit.tasks.base import save_task
from bertkit.tasks.classification import SPEC, BertForSequenceClassification, ClassificationInfo
from tests.conftest import randomize_

TEXTS = ["这家酒店非常好，服务很棒", "房间太差了，服务很糟糕", "环境好，很满意", "糟糕透了，不满意", "hello world"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def make_classifier(directory: Path, labels: tuple[str, ...] = ("neg", "pos"), seed: int = 0) -> Path:
    """A classification checkpoint as `finetune` writes it: weights, config.json, vocab.txt, task.json."""
    tok = Tokenizer.train(TEXTS, vocab_size=80, min_frequency=1)
    info = ClassificationInfo(list(labels), 32)
    config = BertConfig(**TINY, vocab_size=len(tok), pad_token_id=tok.pad_token_id, extra=SPEC.config_extra(info))
    model = randomize_(BertForSequenceClassification(config), seed=seed)
    save_task(SPEC, info, model, tok, directory)
    return directory


def finetune_tiny(task: str, root: Path) -> tuple[Path, list]:
    """Each task's own `finetune` for 2 steps on a handful of rows: (its checkpoint, inputs to predict)."""
    import json

    from bertkit.tasks import task_spec
    from bertkit.train import TrainConfig

    kwargs: dict = {}
    if task == "classification":
        data = root / "train.tsv"
        data.write_text("label\ttext\n" + "".join(f"{i % 2}\t{t}\n" for i, t in enumerate(TEXTS * 2)),
                        encoding="utf-8")
        corpus, inputs = TEXTS, [TEXTS[0], {"text": TEXTS[1]}]
    elif task == "ner":
        data = root / "train.txt"
        data.write_text("张 B-PER\n三 I-PER\n去 O\n北 B-LOC\n京 I-LOC\n\n" * 4, encoding="utf-8")
        corpus, inputs, kwargs = ["张三去北京"], ["张三去北京了"], {"options": task_spec(task).options(crf=True)}
    elif task == "intent_slot":
        data = root / "train"
        data.mkdir()
        (data / "seq.in").write_text("play song by adele\nweather in paris\n" * 3)
        (data / "seq.out").write_text("O B-song O B-singer\nO O B-city\n" * 3)
        (data / "label").write_text("PlayMusic\nGetWeather\n" * 3)
        corpus, inputs = ["play song by adele weather in paris"], ["weather in rome"]
        kwargs = {"options": task_spec(task).options(crf=True)}
    elif task == "relation":
        data = root / "train.tsv"
        data.write_text("Cause-Effect(e1,e2)\tthe <e1> fire </e1> caused the <e2> smoke </e2> .\n"
                        "Other\tthe <e1> cat </e1> sat near the <e2> door </e2> .\n" * 3)
        corpus = ["the fire caused the smoke the cat sat near the door"]
        inputs = [{"text": "the fire caused the smoke", "head": "fire", "tail": "smoke"}]
    elif task == "spelling":
        data = root / "train.tsv"
        data.write_text("今天天汽很好\t今天天气很好\n我喜欢天气\t我喜欢天气\n" * 4, encoding="utf-8")
        corpus, inputs, kwargs = ["今天天气很好我喜欢汽"], ["今天天汽很好"], {"fmt": "tsv"}
    else:
        context = "小明住在北京，小红住在上海。"
        items = [{"id": str(i), "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
                 for i, (q, a) in enumerate([("谁住在北京", "小明"), ("谁住在上海", "小红")] * 3)]
        data = root / "train.json"
        data.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": items}]}]},
                                   ensure_ascii=False), encoding="utf-8")
        corpus, inputs = ["谁住在北京" + context], [{"question": "谁住在上海", "context": context}]
        kwargs = {"max_seq_len": 64}
    Tokenizer.train(corpus, vocab_size=80, min_frequency=1).save_pretrained(root / "vocab")
    config = TrainConfig(output_dir=str(root / "run"), batch_size=4, max_steps=2, lr=1e-3, warmup=0,
                         progress=False, bf16=False)
    task_spec(task).finetune(data, config, tokenizer=root / "vocab", model_size="tiny", **kwargs)
    return root / "run" / "model", inputs
