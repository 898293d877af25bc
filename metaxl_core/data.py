"""The data layer: named datasets -> sampled, label-mapped examples -> encoded features.

    from metaxl_core.data import encode, load_task_data, make_collator

    data = load_task_data(cfg)  # cfg: TrialConfig
    enc = encode(data.target_train, tokenizer, data.labels, cfg.task, cfg.max_seq_length)
    loader = DataLoader(enc.features, batch_size=10, shuffle=True,
                        collate_fn=make_collator(tokenizer, cfg.task))

Dataset names ("task:dataset:language") are parsed by metaxl_core.names; where each dataset's
files lie and how one split is read (the data root, file layouts, the hub, IOB2 repairs) is
metaxl_core.readers. Readers return sentiment labels negative/neutral/positive;
``sentiment_labels="binary"`` then drops neutral (as the MetaXL paper did for SentiPers).

NER label schema "shared": the entity types are those found in both the source's and the target's
train splits (the target's alone without a source; with several sources, in every one of them);
tags of any other type become ``O`` in every split, and ``notes["folded_entities"]`` counts the
folded entities per split and type.

Several sources (``source: "a,b"``): each is sampled to ``source_train_size`` on its own;
``TaskData.source_train`` holds their samples one after another, ``TaskData.source_sizes`` how
many of each, in the order the sources are named.

Sampling: ``source_train_size`` / ``target_train_size`` examples are drawn from the train splits by
a shuffle seeded with ``data_seed`` (samples are nested: with the same seed, the first 100 of a
200-example sample are the 100-example sample); ``target_dev_size`` caps the dev split the same
way; the target test split is always used whole. A configured source is read for every method,
target_only included, so all methods of a sweep share one label set; for sentiment source_only the
target's train split is not read (AfriSenti orm and tir have none). ``TaskData.notes`` records the
files read, counts available/used per split, IOB2 repairs, dropped neutral examples, entity types
and folded entities.

Split-index file (``split_index_file``): JSON ``{"train": [...], "dev": [...], "test": [...]}``
(any subset of the keys) of 0-based example positions in the target's splits, in file order and
counted before neutral examples are dropped. The listed examples replace the split before
sampling and capping, so ``target_train_size`` must be <= the number of train indices (equal to it
reproduces the listed train split exactly).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from metaxl_core.config import split_sources
from metaxl_core.errors import DataError
from metaxl_core.names import TASKS, DataSpec
from metaxl_core.readers import (SAMPLE_ROOT, SENTIMENT_3WAY, SPLITS, read_split_with_info, read_text,
                                 resolve_data_root)

SENTIMENT_BINARY = ["negative", "positive"]


@dataclass
class TaskData:
    """Everything one trial trains and evaluates on, plus notes on how it was derived."""

    labels: list[str]
    source_train: list[dict]  # every source's sample, in the order of source_sizes
    target_train: list[dict]
    target_dev: list[dict]
    target_test: list[dict]
    notes: dict = field(default_factory=dict)
    source_sizes: list[int] = field(default_factory=list)  # examples of each source in source_train


@dataclass
class Encoded:
    """Model inputs for a list of examples; `gold` keeps the word-level truth for evaluation."""

    features: list[dict]
    gold: list
    n_truncated: int
    n_unk_words: int
    n_words: int = 0  # NER: words in the split
    n_words_cut: int = 0  # NER: words lost to max_seq_length (scored as predicted "O")


# ----------------------------------------------------------------------------- task assembly
def load_task_data(cfg) -> TaskData:
    """Read, sample, label-map and fold the source and target data of a TrialConfig."""
    root = resolve_data_root(cfg.data_root)
    target = DataSpec.parse(cfg.target)
    sources = [DataSpec.parse(name) for name in split_sources(cfg.source)]
    index = _read_split_index(Path(cfg.split_index_file)) if cfg.split_index_file else {}
    binary = cfg.task == "sentiment" and cfg.sentiment_labels == "binary"
    notes = {"data_root": str(root), "source": cfg.source, "target": cfg.target,
             "data_seed": cfg.data_seed, "split_index_file": cfg.split_index_file,
             "files": {}, "iob2_repairs": {}, "counts": {}}

    def split_of(spec: DataSpec, split: str, name: str) -> tuple[list[dict], str]:
        """The examples of one split, and where they came from (for error messages)."""
        examples, info = read_split_with_info(spec, split, root)
        where = notes["files"][name] = info["source"]
        notes["iob2_repairs"][name] = info["iob2_repairs"]
        if info.get("empty_tokens"):
            notes.setdefault("empty_tokens_skipped", {})[name] = info["empty_tokens"]
        if spec == target and split in index:
            examples = _apply_index(examples, index[split], cfg.split_index_file, split, where)
            where += f" (indices from {cfg.split_index_file})"
        if binary:
            kept = [ex for ex in examples if ex["label"] != "neutral"]
            notes.setdefault("dropped_neutral", {})[name] = len(examples) - len(kept)
            examples, where = kept, where + " after dropping neutral"
        notes["counts"][name] = {"available": len(examples)}
        return examples, where

    def train_sample(spec: DataSpec, name: str, size_field: str) -> tuple[list[dict], list[dict]]:
        """The whole train split and the `size_field`-sized sample drawn from it."""
        examples, where = split_of(spec, "train", name)
        size = getattr(cfg, size_field)
        if size > len(examples):
            hint = "" if root != SAMPLE_ROOT else (
                "; the bundled sample holds 200 train examples per language: point --data-root "
                "or METAXL_DATA_ROOT at the full data")
            raise DataError(f"{where}: {name} has {len(examples)} examples but {size_field}={size} "
                            f"were requested; lower {size_field} (--{size_field.replace('_', '-')} "
                            f"N with N <= {len(examples)}){hint}")
        return examples, _shuffled(examples, cfg.data_seed)[:size]

    source_pools, source_samples = [], []
    for spec in sources:
        name = "source_train" if len(sources) == 1 else f"source_train:{spec}"
        pool, sample = train_sample(spec, name, "source_train_size")
        source_pools.append(pool)
        source_samples.append(sample)
    source_train = [ex for sample in source_samples for ex in sample]
    if cfg.task == "sentiment" and cfg.method == "source_only":
        target_pool, target_train = [], []  # zero-shot: the target's train split is not needed
    else:
        target_pool, target_train = train_sample(target, "target_train", "target_train_size")
    target_dev, _ = split_of(target, "dev", "target_dev")
    if cfg.target_dev_size is not None:
        target_dev = _shuffled(target_dev, cfg.data_seed)[:cfg.target_dev_size]
    target_test, _ = split_of(target, "test", "target_test")
    splits = {"source_train": source_train, "target_train": target_train,
              "target_dev": target_dev, "target_test": target_test}

    if cfg.task == "sentiment":
        labels = SENTIMENT_BINARY if binary else SENTIMENT_3WAY
    else:
        types = {"target": sorted(entity_types(target_pool))}
        shared = set(types["target"])
        for spec, pool in zip(sources, source_pools):
            key = "source" if len(sources) == 1 else f"source:{spec}"
            types[key] = sorted(entity_types(pool))
            shared &= set(types[key])
            if not shared:
                others = "" if len(sources) == 1 else " and the sources named before it"
                raise DataError(f"{spec} (types {types[key]}) and {target} (types "
                                f"{types['target']}){others} share no entity type")
        types["shared"] = sorted(shared)
        notes["entity_types"], notes["folded_entities"] = types, {}
        for name, examples in splits.items():
            splits[name], notes["folded_entities"][name] = fold_types(examples, shared)
        labels = ["O"] + [f"{prefix}-{t}" for t in sorted(shared) for prefix in "BI"]
    for name, examples in splits.items():
        notes["counts"].setdefault(name, {})["used"] = len(examples)
    notes["labels"] = list(labels)
    return TaskData(list(labels), **splits, notes=notes,
                    source_sizes=[len(sample) for sample in source_samples])


def entity_types(examples: list[dict]) -> set[str]:
    """The NER entity types tagged in `examples`."""
    return {tag[2:] for ex in examples for tag in ex["tags"] if tag != "O"}


def fold_types(examples: list[dict], types: set[str]) -> tuple[list[dict], dict[str, int]]:
    """Examples with tags of other entity types set to O, and the entities folded per type."""
    folded, out = Counter(), []
    for ex in examples:
        tags = []
        for tag in ex["tags"]:
            if tag != "O" and tag[2:] not in types:
                folded[tag[2:]] += tag.startswith("B-")
                tag = "O"
            tags.append(tag)
        out.append({**ex, "tags": tags})
    return out, dict(sorted(folded.items()))


def _shuffled(examples: list, seed: int) -> list:
    """`examples` in an order fixed by `seed`; its prefixes are the nested samples."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order]


def _read_split_index(path: Path) -> dict[str, list[int]]:
    """Validate a split-index JSON file: {split: [distinct non-negative ints]}."""
    try:
        index = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(index, dict) or not set(index) <= set(SPLITS):
        raise DataError(f"{path}: expected a JSON object with keys among {SPLITS}")
    for split, positions in index.items():
        if (not isinstance(positions, list) or not positions
                or not all(type(i) is int and i >= 0 for i in positions)):
            raise DataError(f"{path}: {split!r} must be a non-empty list of indices >= 0")
        if len(set(positions)) != len(positions):
            raise DataError(f"{path}: {split!r} lists an index twice")
    return index


def _apply_index(examples: list[dict], positions: list[int], index_file: str, split: str,
                 where: str) -> list[dict]:
    bad = [i for i in positions if i >= len(examples)]
    if bad:
        raise DataError(f"{index_file}: {split!r} index {bad[0]} is out of range: {where} has "
                        f"{len(examples)} examples")
    return [examples[i] for i in positions]


# ---------------------------------------------------------------------------------- encoding
def encode(examples: list[dict], tokenizer, labels: list[str], task: str,
           max_seq_length: int) -> Encoded:
    """Tokenise examples with a fast tokenizer, truncating to `max_seq_length`.

    NER labels the first subword of each word and gives -100 to the rest and to special tokens; a
    word that yields no subword is fed as the unk token, so every kept word has one labelled
    subword. `n_unk_words` counts words that yield no subword or an unk subword (for sentiment,
    words as the tokenizer's pre-tokenizer splits the text)."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{type(tokenizer).__name__} is a slow tokenizer; word alignment needs a "
                        "fast (Rust) tokenizer: load it with AutoTokenizer.from_pretrained(..., "
                        "use_fast=True)")
    label_id = {label: i for i, label in enumerate(labels)}
    if task == "ner":
        return _encode_ner(examples, tokenizer, label_id, max_seq_length)
    if task == "sentiment":
        return _encode_sentiment(examples, tokenizer, label_id, max_seq_length)
    raise DataError(f"unknown task {task!r}; expected one of {TASKS}")


def _label(label_id: dict, label: str, i: int) -> int:
    if label not in label_id:
        raise DataError(f"example {i}: label {label!r} is not one of {list(label_id)}")
    return label_id[label]


def _word_pieces(batch, i: int) -> dict[int, list[int]]:
    pieces: dict[int, list[int]] = {}
    for word, token in zip(batch.word_ids(i), batch["input_ids"][i]):
        if word is not None:
            pieces.setdefault(word, []).append(token)
    return pieces


def _encode_ner(examples, tokenizer, label_id, max_seq_length) -> Encoded:
    if not examples:
        return Encoded([], [], 0, 0)
    words = [list(ex["tokens"]) for ex in examples]
    for i, ex in enumerate(examples):
        if not ex["tokens"] or len(ex["tokens"]) != len(ex["tags"]):
            raise DataError(f"example {i}: needs as many tags as tokens, at least one")
    n_unk = 0
    full = tokenizer(words, is_split_into_words=True)
    for i, ws in enumerate(words):
        pieces = _word_pieces(full, i)
        for w in range(len(ws)):
            if w not in pieces:
                if tokenizer.unk_token is None:
                    raise DataError(f"example {i}: word {ws[w]!r} yields no subword and the "
                                    "tokenizer has no unk token to stand in for it")
                ws[w] = tokenizer.unk_token
            if w not in pieces or tokenizer.unk_token_id in pieces[w]:
                n_unk += 1
    batch = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_seq_length)
    features, n_truncated, n_cut = [], 0, 0
    for i, ex in enumerate(examples):
        word_ids = batch.word_ids(i)
        cut = len(words[i]) - 1 - max((w for w in word_ids if w is not None), default=-1)
        n_truncated += cut > 0
        n_cut += cut
        labels, previous = [], None
        for word in word_ids:
            first = word is not None and word != previous
            labels.append(_label(label_id, ex["tags"][word], i) if first else -100)
            previous = word
        features.append({"input_ids": batch["input_ids"][i],
                         "attention_mask": batch["attention_mask"][i], "labels": labels})
    return Encoded(features, [list(ex["tags"]) for ex in examples], int(n_truncated), n_unk,
                   sum(map(len, words)), n_cut)


def _encode_sentiment(examples, tokenizer, label_id, max_seq_length) -> Encoded:
    texts = [ex["text"] for ex in examples]
    if not texts:
        return Encoded([], [], 0, 0)
    full = tokenizer(texts)
    n_truncated = sum(len(ids) > max_seq_length for ids in full["input_ids"])
    n_unk = sum(tokenizer.unk_token_id in p
                for i in range(len(texts)) for p in _word_pieces(full, i).values())
    batch = tokenizer(texts, truncation=True, max_length=max_seq_length)
    features = [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
                 "labels": _label(label_id, ex["label"], i)} for i, ex in enumerate(examples)]
    return Encoded(features, [ex["label"] for ex in examples], n_truncated, n_unk)


def make_collator(tokenizer, task: str):
    """Dynamic per-batch padding (NER labels padded with -100)."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    if task == "ner":
        return DataCollatorForTokenClassification(tokenizer)
    if task == "sentiment":
        return DataCollatorWithPadding(tokenizer)
    raise DataError(f"unknown task {task!r}; expected one of {TASKS}")
