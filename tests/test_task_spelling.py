"""Chinese spelling correction: confusion-set corruption, SIGHAN metrics by hand, readers, a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from bertkit import DataError, Tokenizer, resources
from bertkit.tasks import spelling
from bertkit.tasks.spelling import corrupt, csc_scores, encode_pair, read_confusions, read_pairs
from bertkit.train import TrainConfig
from tests.conftest import shared_data


def test_confusion_sets_and_corruption():
    confusions = read_confusions(resources.data_file(resources.PYCORRECTOR, "pycorrector/data/same_pinyin.txt"),
                                 resources.data_file(resources.PYCORRECTOR, "pycorrector/data/same_stroke.txt"))
    assert len(confusions) > 3000 and "壹" in confusions["一"]
    sentence = "我们今天去北京看朋友"
    changed = 0
    for seed in range(200):
        out = corrupt(sentence, confusions, np.random.default_rng(seed))
        diff = [i for i in range(len(sentence)) if out[i] != sentence[i]]
        assert len(out) == len(sentence) and 1 <= len(diff) <= 2
        assert all(out[i] in confusions[sentence[i]] for i in diff)
        changed += len(diff)
    assert 250 < changed < 350  # 1 or 2 errors, evenly
    assert corrupt("abc", confusions, np.random.default_rng(0)) == "abc"  # nothing confusable: unchanged


def test_csc_scores_by_hand():
    sources = ["天气很号", "我爱北京", "他是学声", "没有错误"]
    targets = ["天气很好", "我爱北京", "他是学生", "没有错误"]
    predictions = ["天气很好", "我爱背京", "他是学身", "没有错误"]
    s = csc_scores(sources, targets, predictions)
    # sentences with errors: 1 and 3; changed by the model: 1, 2, 3
    # detection: 1 and 3 have exactly the right positions -> P 2/3, R 2/2; correction: only 1 -> P 1/3, R 1/2
    assert s["sentence_detection_precision"] == pytest.approx(2 / 3) and s["sentence_detection_recall"] == 1.0
    assert s["sentence_correction_precision"] == pytest.approx(1 / 3)
    assert s["sentence_correction_recall"] == pytest.approx(1 / 2)
    # characters: gold {s1:3, s3:3}, predicted {s1:3, s2:2, s3:3}
    assert s["char_detection_precision"] == pytest.approx(2 / 3) and s["char_detection_recall"] == 1.0
    assert s["char_correction_f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_sighan_files_read_and_errors(tmp_path):
    assert len(read_pairs(shared_data("sighan_csc", "simplified", "test15_error.txt"))) == 1100
    assert len(read_pairs(shared_data("sighan_csc", "simplified"))) == 700 + 3437 + 2339
    (tmp_path / "x_error.txt").write_text("天气很号\n我爱北京\n", encoding="utf-8")
    (tmp_path / "x_correct.txt").write_text("天气很好\n我爱北京市\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x_error\.txt:2: input has 4 characters but the correction has 5"):
        read_pairs(tmp_path / "x_error.txt")


def test_one_token_per_character():
    tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"天气很好号", "a"])
    ids, labels, index = encode_pair(tok, "天气 很号A😀", "天气 很好A😀", 32)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "天", "气", "很", "号", "a", "[UNK]", "[SEP]"]
    assert index == [-1, 0, 1, 3, 4, 5, 6, -1]  # the space has no position and passes through
    assert labels[4] == tok.token_to_index["好"] and labels[6] == -100  # no training on [UNK]


def test_tiny_end_to_end(tmp_path):
    pairs = [("今天天汽很好", "今天天气很好"), ("明天天汽不好", "明天天气不好"), ("天汽预报说", "天气预报说"),
             ("我喜欢天气", "我喜欢天气")] * 8
    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    tok = Tokenizer.train([b for _, b in pairs] + [a for a, _ in pairs], vocab_size=60, min_frequency=1)
    tok.save_pretrained(tmp_path / "vocab")
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=8, max_steps=60, lr=3e-3, warmup=2,
                         log_every=10, progress=False, bf16=False)
    result = spelling.finetune(train, config, eval_file=train, fmt="tsv", tokenizer=tmp_path / "vocab",
                               model_size="tiny")
    assert result.metrics["sentence_correction_f1"] > 0.9
    from bertkit import BertForPreTraining

    model = BertForPreTraining.from_pretrained(tmp_path / "run" / "model")
    out = spelling.predict(model, Tokenizer.from_pretrained(tmp_path / "run" / "model"), spelling.SpellingInfo(128),
                           [{"text": "今天天汽很好"}])
    assert out[0]["corrected"] == "今天天气很好"
    assert out[0]["edits"] == [{"position": 3, "from": "汽", "to": "气"}]
