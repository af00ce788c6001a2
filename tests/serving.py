"""Test helpers: tiny fine-tuned checkpoints (NER, intent + slots, triples, windowed classifiers). The serving
harness the benchmarks share (a real `bertkit serve`, the sentence-pair classifier, random-weight checkpoints) is
bench/_serving.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bertkit import Tokenizer
from bertkit.tasks import classification, intent_slot, ner, triples
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


SONGS = [("曾经的你", "许巍"), ("青花瓷", "周杰伦"), ("后来", "刘若英"), ("童话", "光良"), ("小幸运", "田馥甄"),
         ("平凡之路", "朴树")]
FATHERS = [("张三", "张大"), ("李四", "李老"), ("王五", "王伯"), ("赵六", "赵公")]


def duie_line(text: str, *spo: tuple[str, str, str, str, str]) -> str:
    """One DuIE record: (subject, subject type, predicate, object, object type) triples, objects as DuIE nests them."""
    return json.dumps({"text": text, "spo_list": [
        {"subject": s, "subject_type": st, "predicate": p, "object": {"@value": o, "inWork": "x"},
         "object_type": {"@value": ot}} for s, st, p, o, ot in spo]}, ensure_ascii=False)


def triples_corpus() -> list[str]:
    """12 DuIE records: who sang a song, and whose father is whom (some records hold both)."""
    lines = []
    for i, (song, singer) in enumerate(SONGS):
        son, father = FATHERS[i % len(FATHERS)]
        lines.append(duie_line(f"《{song}》是{singer}演唱的歌曲", (song, "歌曲", "歌手", singer, "人物")))
        lines.append(duie_line(f"{son}的父亲是{father}，他爱听{singer}的《{song}》",
                               (son, "人物", "父亲", father, "人物"), (song, "歌曲", "歌手", singer, "人物")))
    return lines


def make_triples_checkpoint(root: Path, max_steps: int = 300) -> Path:
    """A triples model that learnt `triples_corpus` (exact triples on its sentences)."""
    data = root / "train.json"
    data.write_text("\n".join(triples_corpus()), encoding="utf-8")
    Tokenizer.train([json.loads(line)["text"] for line in triples_corpus()], vocab_size=120, min_frequency=1
                    ).save_pretrained(root / "vocab")
    config = TrainConfig(output_dir=str(root / "run"), batch_size=4, max_steps=max_steps, lr=2e-3, warmup=10,
                         log_every=50, progress=False, bf16=False, seed=0)
    triples.finetune(data, config, eval_file=data, tokenizer=root / "vocab", model_size="tiny", max_seq_len=48)
    return root / "run" / "model"


def make_intent_checkpoint(root: Path, max_seq_len: int = 16) -> Path:
    """A tiny intent + slot model (ATIS layout) with a short max_seq_len, so an ordinary sentence is over-long."""
    data = root / "train"
    data.mkdir(parents=True)
    utterances = [("fly from boston to denver", "O O B-from O B-to", "flight"),
                  ("show fares to dallas", "O O O B-to", "airfare")] * 8
    (data / "seq.in").write_text("\n".join(u[0] for u in utterances) + "\n", encoding="utf-8")
    (data / "seq.out").write_text("\n".join(u[1] for u in utterances) + "\n", encoding="utf-8")
    (data / "label").write_text("\n".join(u[2] for u in utterances) + "\n", encoding="utf-8")
    Tokenizer.train([data / "seq.in"], vocab_size=60, min_frequency=1).save_pretrained(root / "vocab")
    config = TrainConfig(output_dir=str(root / "run"), batch_size=8, max_steps=10, lr=3e-3, warmup=2,
                         progress=False, bf16=False)
    intent_slot.finetune(data, config, tokenizer=root / "vocab", model_size="tiny", max_seq_len=max_seq_len)
    return root / "run" / "model"


def make_windowed_classifier(directory: Path, problem: str, pool: str = "mean", labels: tuple[str, ...] = ("neg", "pos")
                             ) -> tuple[Any, Tokenizer]:
    """A random-weight classifier of `problem` (transformers' problem_type) that reads long texts in windows
    (max_seq_len 8: windows of 6 tokens, every 3), saved as finetune saves it; returns (model, tokenizer)."""
    from bertkit import BertConfig
    from bertkit.tasks.base import save_task
    from tests.conftest import randomize_

    tok = Tokenizer.train(["the cat sat on the mat while dogs run fast and it is raining"], vocab_size=60,
                          min_frequency=1)
    info = classification.ClassificationInfo(list(labels) if problem != "regression" else ["score"], 8,
                                             problem_type=problem, long_text="windows", stride=3, pool=pool)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                        vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                        extra=classification.SPEC.config_extra(info))
    model = randomize_(classification.BertForSequenceClassification(config), seed=3).eval()
    save_task(classification.SPEC, info, model, tok, directory)
    return model, tok
