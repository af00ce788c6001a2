"""Knowledge-graph triples from raw text: (subject, predicate, object) with entity types, for a graph's nodes and
edges. Two heads (`--head`, recorded in the checkpoint). `pipeline` (this file): a word-level BIO tagger finds the
typed entities, then a pair head scores every ordered pair of entities found in one sequence against every predicate
(sigmoid: a pair may hold several), kept where the schema allows the pair's types for the predicate; trained jointly
(gold entities feed the pair head), decoded as a pipeline. `gplinker` (tasks/gplinker.py): span pointers for
subjects and objects, and per-predicate pointers from subject to object, over every pair of a window. Scored as DuIE
and WebNLG are: exact string match of (subject, predicate, object), micro P/R/F1 over sentences. The formats, the
schema and how entities are located: tasks/triples_data.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.argtypes import flag
from bertkit.config import BertConfig
from bertkit.errors import DataError
from bertkit.metrics import get_entities
from bertkit.model import BertModel, CheckpointIO, Dropout, init_weights
from bertkit.tasks import gplinker, tagging
from bertkit.tasks.base import FinetuneTask, SkipReport, require_examples, run_batches, take
from bertkit.tasks.spec import (
    InputField,
    TaskSpec,
    choice_field,
    chunks,
    id2label,
    labels_field,
    seq_len_field,
)
from bertkit.tasks.tagging import Piece, TaggingHead, encode_sentences, spans_to_tags, tag_set
from bertkit.tasks.triples_data import (
    FORMATS,
    WORD_LEVEL,
    Located,
    Record,
    TriplesTrainTask,
    locate,
    read_records,
    read_schema,
    score_extracted,
)
from bertkit.tokenizer import Tokenizer

NAME = "triples"
PIPELINE = "pipeline"
HEADS = (PIPELINE, gplinker.HEAD)
# Entity pairs scored per chunk of text, at most: the nearest ones where the tagger found more entities than that
# many pairs need (23 entities: 506 pairs). A text of one repeated name tags an entity every few words, and every
# ordered pair of 255 entities is 64,770 pairs a chunk, 64 chunks a batch: gigabytes, and seconds of Python.
MAX_PAIRS = 512
PAIR_BATCH = 16_384  # pairs through the pair head at once


# ---- the model ----------------------------------------------------------------------------------------------------

class BertForTriples(CheckpointIO, nn.Module):
    """BERT + the entity tagger (transformers' BertForTokenClassification names: the checkpoint loads there as the
    tagger) + a pair head: [first; last word of the subject; first; last word of the object] -> dense -> GELU ->
    one logit per predicate."""

    hf_architecture = "BertForTokenClassification"
    hf_head_renames = (("head.classifier.", "classifier."),)

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if not config.extra.get("id2label") or not config.extra.get("bertkit_predicates"):
            raise DataError("the config needs id2label (the entity tags) and bertkit_predicates")
        self.config = config
        H = config.hidden_size
        self.bert = BertModel(config, pooler=False)
        self.head = TaggingHead(config, len(config.extra["id2label"]), False)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.pair_dense = nn.Linear(4 * H, H)
        self.pair_out = nn.Linear(H, len(config.extra["bertkit_predicates"]))
        for layer in (self.pair_dense, self.pair_out):
            init_weights(layer, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None, word_index: Tensor,
                pairs: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
        """(tag scores (B, W, C), pair logits (N, P) for `pairs` (N, 5): row, subject first, last, object first,
        last word, first-piece states (B, W, H))."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        words = hidden.gather(1, word_index[:, :, None].expand(-1, -1, hidden.shape[-1]))  # (B, W, H)
        emissions = self.head.classifier(self.head.dropout(words))
        return emissions, (self.pair_logits(words, pairs) if pairs is not None else None), words

    def pair_logits(self, words: Tensor, pairs: Tensor) -> Tensor:
        row = pairs[:, 0]
        parts = [words[row, pairs[:, k]] for k in (1, 2, 3, 4)]  # (N, H) each
        return self.pair_out(self.dropout(F.gelu(self.pair_dense(self.dropout(torch.cat(parts, -1))))))


# ---- encoding -----------------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One model input: a chunk of a record, its entities (local word positions) and, for training, pair targets."""

    piece: Piece
    entities: list[tuple[str, int, int, str]]  # (type, first, last position in the piece, name)
    pairs: list[tuple[int, int, tuple[int, ...]]]  # (subject entity, object entity, predicate ids)


def _piece_entities(piece: Piece, spans: list[tuple[str, int, int, str]]) -> list[tuple[str, int, int, str]]:
    """The entities wholly inside the piece (its first and last word in it), at the piece's word positions."""
    local = {word: i for i, word in enumerate(piece.positions)}
    return [(kind, local[first], local[last], name) for kind, first, last, name in spans
            if first in local and last in local]


def encode(tokenizer: Tokenizer, records: list[Record], info: TriplesInfo, source: str | None = None,
           train: bool = True, located: list[Located] | None = None) -> list[Row]:
    """Records -> rows (chunks of at most max_seq_len tokens); with `train`, tag and pair targets from the gold
    triples, and one warning counting the triples that cannot be learnt and why. `located`: the records'
    `locate` results, where the caller has them already."""
    if located is None:
        located = [locate(r, info.word_level) for r in records]
    tag_ids = {t: i for i, t in enumerate(info.labels)}
    predicate_ids = {p: i for i, p in enumerate(info.predicates)}
    tags = None
    if train:
        tags = []
        for r, loc in zip(records, located, strict=True):
            sequence = spans_to_tags(len(loc.words), [(k, a, b) for k, a, b, _ in loc.spans])
            unknown = [t for t in sequence if t not in tag_ids]
            if unknown:
                raise DataError(f"entity tag {unknown[0]!r} is not in the tag set", source, r.line)
            tags.append([tag_ids[t] for t in sequence])
    pieces = encode_sentences(tokenizer, [loc.words for loc in located], tags, info.max_seq_len, source)
    rows, paired = [], [set() for _ in records]
    golds: list[dict[tuple[str, str], set[int]]] = [{} for _ in records]  # (subject, object) -> predicate ids
    if train:  # once per record, not once per chunk
        for gold, loc in zip(golds, located, strict=True):
            for t in loc.trainable:
                if t.predicate in predicate_ids:
                    gold.setdefault((t.subject, t.object), set()).add(predicate_ids[t.predicate])
    for piece in pieces:
        loc = located[piece.sentence]
        entities = _piece_entities(piece, loc.spans)
        pairs = []
        if train:
            gold = golds[piece.sentence]
            for a, (_, _, _, sname) in enumerate(entities):
                for b, (_, _, _, oname) in enumerate(entities):
                    if a != b and sname != oname:
                        labels = gold.get((sname, oname), set())
                        pairs.append((a, b, tuple(sorted(labels))))
                        if labels:
                            paired[piece.sentence].add((sname, oname))
        rows.append(Row(piece, entities, pairs))
    if train and source is not None:
        report = SkipReport(source)
        for r, loc, done in zip(records, located, paired, strict=True):
            for reason, count in loc.problems.items():
                for _ in range(count):
                    report.skip(r.line, reason)
            for t in loc.trainable:
                if (t.subject, t.object) not in done and t.subject != t.object:
                    report.skip(r.line, "triple(s) whose two entities fall in different max_seq_len chunks "
                                        "(raise --max-seq-len)")
                elif t.subject == t.object:
                    report.skip(r.line, "triple(s) whose subject is its object")
        report.report()
    return rows


def collate(rows: list[Row], pad_id: int, num_predicates: int) -> dict[str, Any]:
    batch = tagging.collate([r.piece for r in rows], pad_id)
    pairs, labels = [], []
    for i, r in enumerate(rows):
        for a, b, predicates in r.pairs:
            s, o = r.entities[a], r.entities[b]
            pairs.append((i, s[1], s[2], o[1], o[2]))
            target = [0.0] * num_predicates
            for p in predicates:
                target[p] = 1.0
            labels.append(target)
    batch["pairs"] = torch.tensor(pairs, dtype=torch.long).reshape(-1, 5)
    batch["pair_labels"] = torch.tensor(labels, dtype=torch.float).reshape(-1, num_predicates)
    return batch


# ---- decoding and scoring -----------------------------------------------------------------------------------------

def candidate_pairs(entities: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
    """The (subject, object) entity index pairs of one chunk the pair head scores: every ordered pair, or where
    that is over MAX_PAIRS, the MAX_PAIRS with the fewest entities between them (then the fewest words), found in
    O(MAX_PAIRS + n) without listing all n^2 pairs."""
    n = len(entities)
    if n * (n - 1) <= MAX_PAIRS:
        return [(a, b) for a in range(n) for b in range(n) if a != b]
    chosen: list[tuple[int, int, int, int]] = []  # entities are in text order: neighbours first, gap by gap
    for gap in range(1, n):
        for a in range(n - gap):
            b = a + gap
            distance = entities[b][1] - entities[a][1]
            chosen += [(gap, distance, a, b), (gap, distance, b, a)]
        if len(chosen) >= MAX_PAIRS:
            break
    chosen.sort()
    return [(a, b) for _, _, a, b in chosen[:MAX_PAIRS]]


def _decode(model: nn.Module, rows: list[Row], info: TriplesInfo, pad_id: int, batch_size: int = 64
            ) -> list[tuple[list[tuple[str, int, int]], list[tuple[tuple[str, int, int], str, tuple[str, int, int],
                                                                      float]]]]:
    """Per row: the tagged entities (type, first, last word of the record) and the (subject, predicate, object,
    probability) edges between them that pass the threshold and the schema."""
    allowed = {tuple(r) for r in info.schema}

    def forward(m: nn.Module, batch: dict[str, Any]) -> list[Any]:
        emissions, _, words = m(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                batch["word_index"])
        decoded = m.head.decode(emissions, batch["word_mask"])
        pieces = batch["_pieces"]
        found, pairs = [], []
        for i, tag_ids in enumerate(decoded):
            entities = get_entities([info.labels[t] for t in tag_ids])  # local positions
            found.append(entities)
            pairs += [(i, entities[a][1], entities[a][2], entities[b][1], entities[b][2], a, b)
                      for a, b in candidate_pairs(entities)]
        out: list[Any] = [([(k, piece.positions[f], piece.positions[la]) for k, f, la in entities], [])
                          for piece, entities in zip(pieces, found, strict=True)]
        for start in range(0, len(pairs), PAIR_BATCH):
            chunk = pairs[start : start + PAIR_BATCH]
            index = torch.tensor([p[:5] for p in chunk], device=words.device)
            probs = torch.sigmoid(m.pair_logits(words, index).float()).cpu()
            hits = (probs >= info.threshold).nonzero().tolist()  # (pair, predicate): only those pass on to Python
            for (k, p), score in zip(hits, probs[probs >= info.threshold].tolist(), strict=True):
                i, *_, a, b = chunk[k]
                s, o = out[i][0][a], out[i][0][b]
                predicate = info.predicates[p]
                if not allowed or (s[0], predicate, o[0]) in allowed:
                    out[i][1].append((s, predicate, o, score))
        return out

    def collate_rows(chunk: list[Row]) -> dict[str, Any]:
        batch = tagging.collate([r.piece for r in chunk], pad_id)
        batch["_pieces"] = [r.piece for r in chunk]
        return batch

    return run_batches(model, rows, collate_rows, forward, batch_size)


@torch.no_grad()
def extract(model: nn.Module, tokenizer: Tokenizer, info: TriplesInfo, texts: list[str], batch_size: int = 64
            ) -> list[dict[str, Any]]:
    """Raw texts -> {"triples": [{subject, subject_type, predicate, object, object_type, score}], "entities":
    [{type, start, end, text}]} (character offsets), one per text."""
    records = [Record(t, [], i + 1) for i, t in enumerate(texts)]
    located = [locate(r, info.word_level) for r in records]  # the words and their character offsets
    rows = encode(tokenizer, records, info, train=False, located=located)
    decoded = _decode(model, rows, info, tokenizer.pad_token_id, batch_size)
    results: list[dict[str, Any]] = [{"triples": [], "entities": []} for _ in texts]
    seen: list[dict[tuple[str, str, str], int]] = [{} for _ in texts]
    spans: list[set[tuple[int, int]]] = [set() for _ in texts]
    for row, (entities, edges) in zip(rows, decoded, strict=True):
        index = row.piece.sentence
        text, offsets = texts[index], located[index].offsets

        def name(span: tuple[str, int, int], text: str = text, offsets: list = offsets) -> tuple[str, int, int]:
            start, end = offsets[span[1]][0], offsets[span[2]][1]
            return text[start:end], start, end

        for kind, first, last in entities:
            surface, start, end = name((kind, first, last))
            if (start, end) not in spans[index]:
                spans[index].add((start, end))
                results[index]["entities"].append({"type": kind, "start": start, "end": end, "text": surface})
        for s, predicate, o, score in edges:
            triple = {"subject": name(s)[0], "subject_type": s[0], "predicate": predicate, "object": name(o)[0],
                      "object_type": o[0], "score": round(score, 4)}
            key = (triple["subject"], predicate, triple["object"])
            if key in seen[index]:  # one triple from several occurrences: the highest score
                kept = results[index]["triples"][seen[index][key]]
                kept["score"] = max(kept["score"], triple["score"])
            else:
                seen[index][key] = len(results[index]["triples"])
                results[index]["triples"].append(triple)
    for r in results:
        r["entities"].sort(key=lambda e: e["start"])
    return results


def score(model: nn.Module, tokenizer: Tokenizer, info: TriplesInfo, records: list[Record], batch_size: int = 64
          ) -> dict[str, float]:
    """Triple P/R/F1 and entity F1 of the checkpoint's head on labelled records (`score_extracted`)."""
    return score_extracted(records, extractor(info)(model, tokenizer, info, [r.text for r in records], batch_size))


# ---- the task -----------------------------------------------------------------------------------------------------

def _schema_rows(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(r, list) and len(r) == 3 and all(isinstance(x, str) and x for x in r) for r in value)


@dataclass
class TriplesInfo:
    labels: list[str] = labels_field("the entity labels: the tagger's tags (O, then B-/I- per entity type) with "
                                     "the pipeline head, the span types subject and object with gplinker")
    predicates: list[str] = labels_field("the predicate set, in the pair head's order")
    max_seq_len: int = seq_len_field()
    word_level: str = choice_field(("char", "space"), help="how raw text is split into words")
    schema: list[list[str]] = field(default_factory=list, metadata={
        "check": _schema_rows, "expected": "a list of [subject_type, predicate, object_type] string triples",
        "help": "the (subject type, predicate, object type) combinations a triple may have; empty: any"})
    threshold: float = field(default=0.5, metadata={
        "check": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1,
        "expected": "a number between 0 and 1", "help": "a predicate is kept above this probability"})
    head: str = choice_field(HEADS, PIPELINE, help="which head the checkpoint holds (the model class)")


@dataclass
class TriplesOptions:
    schema: str | None = flag("DuIE's schema file (JSON lines subject_type / predicate / object_type): the type "
                                "combinations a predicted triple may have, besides those seen in training")
    head: str = flag("pipeline: an entity tagger, then a classifier of each pair of tagged entities; gplinker: "
                     "span pointers for subjects and objects, linked per predicate by subject-to-object pointers "
                     "(every entity pair of a window scored)", PIPELINE, choices=HEADS)


def label_sets(located: list[Located]) -> tuple[list[str], list[str], set[tuple[str, str, str]]]:
    """What a training set defines: the BIO tag set of its entity types (just "O" where no entity was found), the
    predicates of its learnable triples, and the (subject type, predicate, object type) combinations they show."""
    types = sorted({s[0] for loc in located for s in loc.spans})
    predicates = sorted({t.predicate for loc in located for t in loc.trainable})
    combos = set()
    for loc in located:
        kinds = {name: kind for kind, _, _, name in loc.spans}
        combos |= {(kinds[t.subject], t.predicate, kinds[t.object]) for t in loc.trainable}
    return tag_set([[f"B-{k}" for k in types]], "bio"), predicates, combos


class TriplesTask(TriplesTrainTask):
    encode = staticmethod(encode)
    collate = staticmethod(collate)

    def fingerprint(self) -> str:
        from bertkit.resume import data_fingerprint  # the encoded training examples: --resume refuses other data

        return data_fingerprint([(r.piece, r.entities, r.pairs) for r in self.train])

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"tag": float(((batch["tags"] != -100) & batch["word_mask"]).sum()),
                "pair": float(len(batch["pairs"]))}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        emissions, logits, _ = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                     batch["word_index"], batch["pairs"])
        head = model.module.head if hasattr(model, "module") else model.head
        tag, _ = head.loss_sum(emissions, batch["tags"], batch["word_mask"])
        pair = F.binary_cross_entropy_with_logits(logits.float(), batch["pair_labels"], reduction="sum")
        return {"tag": tag, "pair": pair}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        return score(model, self.tokenizer, self.info, self.heldout, self.eval_batch_size)


def finetune(train_file: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "duie",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 128, limit: int | None = None, options: TriplesOptions | None = None) -> Any:
    """Fine-tune the tagger and the pair head together on `train_file` (or, with `options.head` gplinker, the
    span and link pointers); scores triple F1 on `eval_file`."""
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    options = options or TriplesOptions()
    tok = finetune_tokenizer(init_from, tokenizer)
    train = require_examples(take(read_records(train_file, fmt), limit), train_file, "training")
    heldout = require_examples(read_records(eval_file, fmt), eval_file, "evaluation") if eval_file else []
    word_level = WORD_LEVEL[fmt]
    located = [locate(r, word_level) for r in train]
    task: FinetuneTask
    if options.head == gplinker.HEAD:
        predicates = sorted({t.predicate for loc in located for t in loc.trainable})
        if not predicates:
            raise DataError("no training triple has both its subject and its object in its text", str(train_file))
        info = TriplesInfo(list(gplinker.ROLES), predicates, max_seq_len, word_level,
                           gplinker.schema_rows(located, predicates, options.schema), head=gplinker.HEAD)
        task = gplinker.GPLinkerTask(tok, train, heldout, info, source=str(train_file), located=located)
    else:
        labels, predicates, combos = label_sets(located)
        if labels == ["O"]:
            raise DataError("no entity of any training triple was found in its text", str(train_file))
        if options.schema is not None:
            combos |= {tuple(r) for r in read_schema(options.schema) if r[1] in predicates}
        info = TriplesInfo(labels, predicates, max_seq_len, word_level, [list(c) for c in sorted(combos)])
        task = TriplesTask(tok, train, heldout, info, source=str(train_file), located=located)
    model_config = encoder_config(init_from, tok, model_size, max_seq_len, **SPEC.config_extra(info))
    model = build_task_model(SPEC.model_for(info), init_from, model_config, config.seed)
    head = f", {info.head}" if info.head != PIPELINE else ""
    return fit(model, task, config, title=f"triples{head} ({Path(train_file).parent.name or 'data'})")


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: TriplesInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    records = require_examples(read_records(path, fmt), path, "evaluation")
    return score(model, tokenizer, info, records)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: TriplesInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """The triples (and the entities) of each raw text."""
    return extractor(info)(model, tokenizer, info, [i["text"] for i in inputs])


def extractor(info: TriplesInfo) -> Any:
    """The `extract` of the checkpoint's head: raw texts -> triples and entities."""
    return gplinker.extract if info.head == gplinker.HEAD else extract


SPEC = TaskSpec(
    name=NAME,
    description="knowledge-graph triples (subject, predicate, object) with entity types, from raw text",
    model=BertForTriples,
    info=TriplesInfo,
    inputs=(InputField("text", "the text to extract triples from", multiline=True),),
    predict=predict,
    view={"spans": "entities", "spans_over": "text", "graph": "triples"},
    example={"text": "《曾经的你》是许巍演唱的歌曲"},
    formats=FORMATS,
    default_format="duie",
    options=TriplesOptions,
    finetune=finetune,
    evaluate=evaluate_file,
    headline="f1",
    work=chunks,
    heads={PIPELINE: BertForTriples, gplinker.HEAD: gplinker.BertForGPLinker},
    config_extra=lambda info: {**id2label(info.labels), "bertkit_predicates": info.predicates,
                               **({"bertkit_head": info.head} if info.head != PIPELINE else {})},
    not_distilled="its pair head scores each predicate with an independent sigmoid (gplinker's pointers each span "
                  "and link), not one softmax to soften",
)
