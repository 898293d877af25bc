"""Where a named dataset's files lie and how they are read: one split of one dataset -> examples.

    from metaxl_core.readers import read_split, resolve_data_root

    examples = read_split(DataSpec.parse("ner:masakhaner2:yor"), "dev", resolve_data_root())

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
positive.
"""

from __future__ import annotations

import os
import random
import re
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from metaxl_core.errors import DataError
from metaxl_core.names import DataSpec

SAMPLE_ROOT = Path(__file__).resolve().parent / "sample_data"
SPLITS = ("train", "dev", "test")
SENTIMENT_3WAY = ["negative", "neutral", "positive"]
HUB_DATASETS = {("ner", "wikiann"): "unimelb-nlp/wikiann",
                ("sentiment", "marc"): "mteb/amazon_reviews_multi"}
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
SENTIPERS_SPLIT_SEED = 0
_SENTIPERS_POLARITY = {"-2": "negative", "-1": "negative", "0": "neutral", "+1": "positive",
                       "1": "positive", "+2": "positive", "2": "positive"}
_MARC_STARS = {0: "negative", 1: "negative", 2: "neutral", 3: "positive", 4: "positive"}  # stars-1
_TAG = re.compile(r"O|[BI]-\S+")
_COLUMNS = re.compile(r"[ \t]+")


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
                        "sentiment/ folders (see docs/data.md)")
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
    return read_split_with_info(spec, split, Path(data_root))[0]


def read_split_with_info(spec: DataSpec, split: str, root: Path) -> tuple[list[dict], dict]:
    """Examples plus {"source": file or hub id, "iob2_repairs": n, "empty_tokens": n (local
    files)}, which load_task_data records in its notes."""
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


def read_text(path: Path) -> str:
    """A UTF-8 file's text (a BOM dropped); DataError naming the file when it cannot be read."""
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
    n_columns, first_line, repairs, empty, docstart = None, 0, 0, 0, False
    for lineno, line in enumerate(read_text(path).split("\n") + [""], start=1):
        columns = _COLUMNS.split(line.strip(" \t\r"))
        if len(columns) == 1 and line[:1] in (" ", "\t") and _TAG.fullmatch(columns[0]):
            empty += 1  # an empty token with its tag (MasakhaNER 2.0 xho train.txt has two)
            continue
        if columns == [""] or columns[0] == "-DOCSTART-":
            docstart |= columns[0] == "-DOCSTART-"
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
    if not sentences and docstart:
        raise DataError(f"{path}: no sentences: it holds only -DOCSTART- document markers")
    if not sentences:
        raise DataError(f"{path}: no sentences (the file is empty)")
    return sentences, repairs, empty


def _read_tsv(path: Path, text_columns: tuple[str, ...], label_column: str,
              label_map: dict[str, str]) -> list[dict]:
    """Rows of a headed TSV file as {"text", "label"}, the label mapped through `label_map`."""
    text = read_text(path)
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
