"""The data layer: named datasets -> sampled, label-mapped examples -> encoded features.

    from metaxl_core.data import encode, load_task_data, make_collator

    data = load_task_data(cfg)  # cfg: TrialConfig
    enc = encode(data.target_train, tokenizer, data.labels, cfg.task, cfg.max_seq_length)
    loader = DataLoader(enc.features, batch_size=10, shuffle=True,
                        collate_fn=make_collator(tokenizer, cfg.task))

Dataset names are "task:dataset:language" (metaxl_core.names). Local data lives under a data root
(the `data_root` argument, else $METAXL_DATA_ROOT, else the bundled sample
`metaxl_core/sample_data`):

- ``ner:<name>:<lang>``: ``<root>/ner/<name>/<lang>/{train,dev,test}.txt`` (masakhaner1,
  masakhaner2, or any folder in that layout); ``ner:conll2003:<lang>`` reads
  ``<root>/ner/conll2003_<lang>/``.
- ``sentiment:<name>:<lang>``: ``<root>/sentiment/<name>/<lang>/{train,dev,test}.tsv`` with a
  header naming a text column (``tweet`` or ``text``) and a ``label`` column holding
  negative/neutral/positive (AfriSenti's layout; other columns are ignored).
- ``sentiment:sentipers:fa``: the single file ``<root>/sentiment/sentipers/sentipers.tsv``
  (columns ``text`` and ``polarity`` in -2..+2). Its rows are split 80/10/10 into
  train/dev/test by a shuffle with the fixed seed 0 (independent of ``data_seed``, so every trial
  sees the same test set); each split keeps file order.
- Hugging Face hub: ``ner:wikiann:<lang>`` (``unimelb-nlp/wikiann``) and ``sentiment:marc:<lang>``
  (the Multilingual Amazon Reviews Corpus as published in ``mteb/amazon_reviews_multi``; de en es
  fr ja zh). Without network access these fail at once with a DataError saying how to use local
  data instead; they never wait on a dead connection.

CoNLL files (UTF-8): one ``token ... TAG`` line per token (space- or tab-separated; token first,
tag last, every line with the same number of columns), a blank line between sentences,
``-DOCSTART-`` lines skipped. Tags must be ``O``, ``B-<type>`` or ``I-<type>`` (IOB2). An ``I-X``
that does not follow ``B-X``/``I-X`` is repaired to ``B-X`` (the usual IOB1 -> IOB2 reading; the
published MasakhaNER files contain a few) and counted in ``TaskData.notes["iob2_repairs"]``. A
line holding only a tag after leading whitespace (an empty token: MasakhaNER 2.0's isiXhosa
train.txt has two) is skipped and counted in ``notes["empty_tokens_skipped"]``.

Sentiment readers return the three-way labels negative/neutral/positive: SentiPers -2/-1 ->
negative, 0 -> neutral, +1/+2 -> positive; MARC 1-2 stars -> negative, 3 -> neutral, 4-5 ->
positive. ``sentiment_labels="binary"`` then drops neutral (as the MetaXL paper did for SentiPers).

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
import os
import random
import re
import socket
import threading
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from metaxl_core.config import split_sources
from metaxl_core.errors import DataError
from metaxl_core.names import TASKS, DataSpec

SAMPLE_ROOT = Path(__file__).resolve().parent / "sample_data"
SPLITS = ("train", "dev", "test")
SENTIMENT_3WAY = ["negative", "neutral", "positive"]
SENTIMENT_BINARY = ["negative", "positive"]
HUB_DATASETS = {("ner", "wikiann"): "unimelb-nlp/wikiann",
                ("sentiment", "marc"): "mteb/amazon_reviews_multi"}
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
SENTIPERS_SPLIT_SEED = 0
_SENTIPERS_POLARITY = {"-2": "negative", "-1": "negative", "0": "neutral", "+1": "positive",
                       "1": "positive", "+2": "positive", "2": "positive"}
_MARC_STARS = {0: "negative", 1: "negative", 2: "neutral", 3: "positive", 4: "positive"}  # stars-1
_TAG = re.compile(r"O|[BI]-\S+")
_COLUMNS = re.compile(r"[ \t]+")


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


# ---------------------------------------------------------------------------------- locating data
def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """The data root: `data_root` if given, else $METAXL_DATA_ROOT, else the bundled sample."""
    if data_root:
        path, origin = Path(data_root), "data root"
    elif os.environ.get("METAXL_DATA_ROOT"):
        path, origin = Path(os.environ["METAXL_DATA_ROOT"]), "$METAXL_DATA_ROOT"
    else:
        return SAMPLE_ROOT
    path = path.expanduser()
    if not path.is_dir():
        raise DataError(f"{origin} {str(path)!r} is not a folder; it should hold ner/ and/or "
                        "sentiment/ folders (see README: Data)")
    return path


def _split_file(spec: DataSpec, split: str, root: Path) -> Path:
    """The local file holding `split` of `spec`; DataError listing what exists when it is absent."""
    if spec.task == "sentiment" and spec.dataset == "sentipers":
        if spec.lang != "fa":
            raise DataError(f"{spec}: sentipers has only the language 'fa'")
        path = root / "sentiment" / "sentipers" / "sentipers.tsv"
    elif spec.task == "ner" and spec.dataset == "conll2003":
        path = root / "ner" / f"conll2003_{spec.lang}" / f"{split}.txt"
    else:
        suffix = ".txt" if spec.task == "ner" else ".tsv"
        path = root / spec.task / spec.dataset / spec.lang / f"{split}{suffix}"
    if path.is_file():
        return path
    available = _available(root, spec.task)
    if spec.dataset not in available:
        listing = "; ".join(f"{name} ({', '.join(langs)})" for name, langs in available.items())
        raise DataError(f"{spec}: unknown dataset {spec.dataset!r} under {root / spec.task}; "
                        f"available: {listing or 'none'}")
    if spec.lang not in available[spec.dataset]:
        raise DataError(f"{spec}: no language {spec.lang!r} for {spec.dataset} under {root}; "
                        f"available: {', '.join(available[spec.dataset])}")
    raise DataError(f"{spec}: file not found: {path}")


def _available(root: Path, task: str) -> dict[str, list[str]]:
    """Dataset name -> languages found under `root` for `task`, plus the hub datasets."""
    found: dict[str, list[str]] = {}
    folder = root / task
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        if task == "ner" and sub.name.startswith("conll2003_"):
            found.setdefault("conll2003", []).append(sub.name.removeprefix("conll2003_"))
        elif sub.name == "sentipers":
            found["sentipers"] = ["fa"]
        elif sub.is_dir():
            found[sub.name] = sorted(p.name for p in sub.iterdir() if p.is_dir())
    for (hub_task, name), repo in HUB_DATASETS.items():
        if hub_task == task:
            found[name] = [f"<lang> from the Hugging Face hub ({repo})"]
    return found


# ------------------------------------------------------------------------------------- readers
def read_split(spec: DataSpec, split: str, data_root: Path) -> list[dict]:
    """Read one split. NER: {"tokens", "tags"} (IOB2); sentiment: {"text", "label"} (3-way)."""
    return _read(spec, split, Path(data_root))[0]


def _read(spec: DataSpec, split: str, root: Path) -> tuple[list[dict], dict]:
    """Examples plus {"source": file or hub id, "iob2_repairs": n}."""
    if split not in SPLITS:
        raise DataError(f"{spec}: unknown split {split!r}; expected one of {SPLITS}")
    if (spec.task, spec.dataset) in HUB_DATASETS:
        return _read_hub(spec, split)
    path = _split_file(spec, split, root)
    info = {"source": str(path), "iob2_repairs": 0, "empty_tokens": 0}
    if spec.task == "ner":
        examples, info["iob2_repairs"], info["empty_tokens"] = _read_conll(path)
    elif spec.dataset == "sentipers":
        rows = _read_tsv(path, ("text",), "polarity", _SENTIPERS_POLARITY)
        examples = _sentipers_split(rows, split)
    else:
        labels = {name: name for name in SENTIMENT_3WAY}
        examples = _read_tsv(path, ("tweet", "text"), "label", labels)
    if not examples:
        raise DataError(f"{path}: the {split} split of {spec} has no examples")
    return examples, info


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror}") from None


def _read_conll(path: Path) -> tuple[list[dict], int, int]:
    """Sentences of a CoNLL file, the number of I- tags repaired to B-, and the number of
    skipped tokens that were empty (a whitespace token before its tag)."""
    sentences, tokens, tags = [], [], []
    n_columns, first_line, repairs, empty = None, 0, 0, 0
    for lineno, line in enumerate(_read_text(path).split("\n") + [""], start=1):
        columns = _COLUMNS.split(line.strip(" \t\r"))
        if len(columns) == 1 and line[:1] in (" ", "\t") and _TAG.fullmatch(columns[0]):
            empty += 1  # an empty token with its tag (MasakhaNER 2.0 xho train.txt has two)
            continue
        if columns == [""] or columns[0] == "-DOCSTART-":
            if tokens:
                tags, repaired = _repair_iob2(tags)
                sentences.append({"tokens": tokens, "tags": tags})
                repairs += repaired
            tokens, tags = [], []
            continue
        if n_columns is None:
            n_columns, first_line = len(columns), lineno
            if n_columns < 2:
                raise DataError(f"{path}:{lineno}: expected 'token TAG' columns, got {line!r}")
        elif len(columns) != n_columns:
            raise DataError(f"{path}:{lineno}: expected {n_columns} columns as on line "
                            f"{first_line}, got {len(columns)}: {line!r}")
        if not _TAG.fullmatch(columns[-1]):
            raise DataError(f"{path}:{lineno}: unknown tag {columns[-1]!r}; expected O, B-<type> "
                            "or I-<type> (IOB2)")
        tokens.append(columns[0])
        tags.append(columns[-1])
    if not sentences:
        raise DataError(f"{path}: no sentences (the file is empty)")
    return sentences, repairs, empty


def _read_tsv(path: Path, text_columns: tuple[str, ...], label_column: str,
              label_map: dict[str, str]) -> list[dict]:
    """Rows of a headed TSV file as {"text", "label"}, the label mapped through `label_map`."""
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty (expected a header line)")
    header, *rows = text.split("\n")
    columns = header.rstrip("\r").split("\t")
    text_column = next((c for c in text_columns if c in columns), None)
    if text_column is None or label_column not in columns:
        wanted = " or ".join(repr(c) for c in text_columns) + f" and {label_column!r}"
        raise DataError(f"{path}:1: the header must name columns {wanted}, got {columns}")
    ti, li = columns.index(text_column), columns.index(label_column)
    examples = []
    for lineno, row in enumerate(rows, start=2):
        row = row.rstrip("\r")
        if not row:
            continue
        values = row.split("\t")
        if len(values) != len(columns):
            raise DataError(f"{path}:{lineno}: expected {len(columns)} tab-separated columns as "
                            f"in the header, got {len(values)} (truncated or malformed row)")
        text, raw = values[ti].strip(), values[li].strip()
        if not text:
            raise DataError(f"{path}:{lineno}: empty {text_column!r}")
        label = label_map.get(raw.lower())
        if label is None:
            raise DataError(f"{path}:{lineno}: unknown {label_column} {raw!r}; expected one of "
                            f"{sorted(set(label_map))}")
        examples.append({"text": text, "label": label})
    return examples


def _sentipers_split(rows: list[dict], split: str) -> list[dict]:
    """SentiPers' fixed 80/10/10 train/dev/test split (seeded shuffle, file order kept)."""
    order = list(range(len(rows)))
    random.Random(SENTIPERS_SPLIT_SEED).shuffle(order)
    n_train, n_dev = int(0.8 * len(rows)), int(0.1 * len(rows))
    bounds = {"train": (0, n_train), "dev": (n_train, n_train + n_dev),
              "test": (n_train + n_dev, len(rows))}[split]
    return [rows[i] for i in sorted(order[bounds[0]:bounds[1]])]


# ------------------------------------------------------------------------------------------ hub
def _read_hub(spec: DataSpec, split: str) -> tuple[list[dict], dict]:
    repo = HUB_DATASETS[(spec.task, spec.dataset)]
    import datasets

    if not datasets.config.HF_HUB_OFFLINE and not _hub_reachable():
        raise _hub_error(spec, repo, "the hub is unreachable (no connection within 3 s)")
    try:
        if spec.task == "ner":
            ds = datasets.load_dataset(repo, spec.lang, split=HUB_SPLITS[split])
            names = ds.features["ner_tags"].feature.names
            rows = [(row["tokens"], [names[t] for t in row["ner_tags"]]) for row in ds]
        else:
            url = f"hf://datasets/{repo}/{spec.lang}/{HUB_SPLITS[split]}.jsonl"
            ds = datasets.load_dataset("json", data_files={split: url}, split=split)
            rows = [(row["text"], row["label"]) for row in ds]
    except Exception as err:  # noqa: BLE001 (hub and cache fail in many ways: all "unavailable")
        raise _hub_error(spec, repo, f"{type(err).__name__}: {err}") from None
    source = f"{repo} ({spec.lang}, {HUB_SPLITS[split]})"
    if spec.task == "ner":
        examples, repairs = [], 0
        for tokens, tags in rows:
            if tokens:
                tags, repaired = _repair_iob2(tags)
                examples.append({"tokens": list(tokens), "tags": tags})
                repairs += repaired
    else:
        if any(label not in _MARC_STARS for _, label in rows):
            raise DataError(f"{source}: labels outside 0..4 (stars - 1); the hub copy changed")
        examples, repairs = [{"text": t, "label": _MARC_STARS[lab]} for t, lab in rows if t], 0
    if not examples:
        raise DataError(f"{source}: no examples")
    return examples, {"source": source, "iob2_repairs": repairs}


def _repair_iob2(tags: list[str]) -> tuple[list[str], int]:
    """Tags with each I-X that does not continue an X entity turned into B-X, and how many."""
    fixed = []
    for tag in tags:
        if tag.startswith("I-") and (not fixed or fixed[-1][2:] != tag[2:]):
            tag = "B-" + tag[2:]
        fixed.append(tag)
    return fixed, sum(a != b for a, b in zip(tags, fixed))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within `timeout` s (DNS included); True behind
    a proxy, which this check cannot see through."""
    import huggingface_hub.constants

    if urllib.request.getproxies().get("https"):
        return True
    url = urllib.parse.urlsplit(huggingface_hub.constants.ENDPOINT)
    reached = []

    def probe():
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached)


def _hub_error(spec: DataSpec, repo: str, reason: str) -> DataError:
    return DataError(
        f"{spec}: cannot load {repo} from the Hugging Face hub: {reason}. Use local data instead: "
        "pass --data-root (or set METAXL_DATA_ROOT) to a folder laid out like ../shared/data and "
        "name a local dataset (ner:masakhaner2:<lang>, ner:masakhaner1:<lang>, ner:conll2003:en, "
        "sentiment:afrisenti:<lang>, sentiment:sentipers:fa). To use the hub, get network access "
        "and unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE; with them set to 1, only datasets "
        "already in the cache (HF_HOME) load.")


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
        examples, info = _read(spec, split, root)
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
                " (the bundled sample holds 200 train examples per language; point --data-root "
                "or METAXL_DATA_ROOT at the full data)")
            raise DataError(f"{where}: {name} has {len(examples)} examples but {size_field}={size} "
                            f"were requested; lower {size_field}{hint}")
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
        types = {"target": sorted(_entity_types(target_pool))}
        shared = set(types["target"])
        for spec, pool in zip(sources, source_pools):
            key = "source" if len(sources) == 1 else f"source:{spec}"
            types[key] = sorted(_entity_types(pool))
            shared &= set(types[key])
            if not shared:
                others = "" if len(sources) == 1 else " and the sources named before it"
                raise DataError(f"{spec} (types {types[key]}) and {target} (types "
                                f"{types['target']}){others} share no entity type")
        types["shared"] = sorted(shared)
        notes["entity_types"], notes["folded_entities"] = types, {}
        for name, examples in splits.items():
            splits[name], notes["folded_entities"][name] = _fold(examples, shared)
        labels = ["O"] + [f"{prefix}-{t}" for t in sorted(shared) for prefix in "BI"]
    for name, examples in splits.items():
        notes["counts"].setdefault(name, {})["used"] = len(examples)
    notes["labels"] = list(labels)
    return TaskData(list(labels), **splits, notes=notes,
                    source_sizes=[len(sample) for sample in source_samples])


def _entity_types(examples: list[dict]) -> set[str]:
    return {tag[2:] for ex in examples for tag in ex["tags"] if tag != "O"}


def _fold(examples: list[dict], types: set[str]) -> tuple[list[dict], dict[str, int]]:
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
        index = json.loads(_read_text(path))
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
