"""Features of a (source, target) language pair that predict how well a model trained on the
source transfers to the target, before any training (LangRank, Lin et al., ACL 2019):

- URIEL distances (Littell et al., EACL 2017), from the feature vectors the `lang2vec` package
  bundles: `syntactic`, `phonological`, `inventory` (cosine distances between its kNN-completed
  WALS/SSWL/Ethnologue/PHOIBLE vectors), `genetic` (cosine distance between memberships of
  Glottolog's family-tree nodes) and `geographic` (great-circle distance over the antipodal
  one, estimated from the distances to 299 fixed points); see `uriel_distance`.
- Data features from the two datasets' train splits: `word_overlap`, `subword_overlap` (under a
  given tokenizer), `entity_overlap` (NER: entity surface strings), each LangRank's
  |A ∩ B| / (|A| + |B|) over types, and `source_size` (train sentences).

    from sweeps.source_features import pair_features
    pair_features("ner:conll2003:en", "ner:masakhaner2:yor", data_root, tokenizer)
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

import numpy as np

from metaxl_core.errors import DataError
from metaxl_core.names import DataSpec, language_of
from metaxl_core.readers import read_split

# The project's language codes (dataset folder names) -> the ISO 639-3 code URIEL files the
# language under. Macrolanguages map to the language the data is in: MasakhaNER's and
# AfriSenti's Swahili is Kiswahili (swh), SentiPers is Iranian Persian (pes).
URIEL_CODES = {
    "en": "eng", "fa": "pes", "swa": "swh", "por": "por",
    "amh": "amh", "arq": "arq", "ary": "ary", "bam": "bam", "bbj": "bbj", "ewe": "ewe",
    "fon": "fon", "hau": "hau", "ibo": "ibo", "kin": "kin", "lug": "lug", "luo": "luo",
    "mos": "mos", "nya": "nya", "orm": "orm", "pcm": "pcm", "sna": "sna", "tir": "tir",
    "tsn": "tsn", "twi": "twi", "wol": "wol", "xho": "xho", "yor": "yor", "zul": "zul",
}
# URIEL distance -> the lang2vec data file and feature-name prefix of its vectors.
URIEL_SETS = {"syntactic": ("feature_predictions.npz", "S_"),
              "phonological": ("feature_predictions.npz", "P_"),
              "inventory": ("feature_predictions.npz", "INV_"),
              "genetic": ("family_features.npz", "F_"),
              "geographic": ("geocoord_features.npz", "GC_")}
URIEL_FEATURES = tuple(URIEL_SETS)
DATA_FEATURES = ("word_overlap", "subword_overlap", "entity_overlap", "source_size")


def uriel_code(lang: str) -> str:
    """The ISO 639-3 code of a project language code ("swa" -> "swh"); DataError naming the
    table when it is not there."""
    try:
        return URIEL_CODES[lang]
    except KeyError:
        raise DataError(f"language {lang!r} has no URIEL code: add it to URIEL_CODES in "
                        f"sweeps/source_features.py (known: {', '.join(sorted(URIEL_CODES))})") from None


@functools.cache
def _uriel_vectors(filename: str, prefix: str) -> dict[str, np.ndarray]:
    """ISO 639-3 code -> its vector of one feature set (missing values -1), from lang2vec's data."""
    try:
        folder = importlib.resources.files("lang2vec") / "data"
    except ModuleNotFoundError:
        raise DataError("URIEL features need the lang2vec package: pip install 'lang2vec==1.1.2'") from None
    with np.load(folder / filename) as table:
        columns = np.char.startswith(table["feats"].astype(str), prefix)
        return dict(zip(table["langs"].astype(str), table["data"][:, columns, 0]))


def uriel_vector(lang: str, kind: str) -> np.ndarray:
    """The URIEL vector of a project language for one distance kind (URIEL_SETS)."""
    code = uriel_code(lang)
    vectors = _uriel_vectors(*URIEL_SETS[kind])
    if code not in vectors:
        raise DataError(f"language {lang!r} ({code}) is not in lang2vec's URIEL data")
    return vectors[code]


def uriel_distance(a: str, b: str, kind: str) -> float:
    """Distance in [0, 1] between two languages' URIEL vectors of `kind`.

    geographic: a geo vector holds the great-circle distance from the language to each of 299
    fixed points, divided by the antipodal distance, so max |u - v| over the points is a lower
    bound (by the triangle inequality; tight when a point lies on the great circle through both)
    of their great-circle distance over the antipodal one, URIEL's geographic distance.
    Others: the cosine distance over the features both have (URIEL marks a missing value -1);
    1 (nothing in common) also when either vector is all zeros there, e.g. no shared family."""
    u, v = uriel_vector(a, kind), uriel_vector(b, kind)
    if kind == "geographic":
        return float(np.max(np.abs(u - v)))
    known = (u != -1) & (v != -1)
    u, v = u[known], v[known]
    norm = float(np.linalg.norm(u) * np.linalg.norm(v))
    return 1.0 if norm == 0 else 1.0 - float(u @ v) / norm


def shared_family_nodes(a: str, b: str) -> int:
    """How many Glottolog family-tree nodes two languages share (the depth of their closest
    common ancestor): the 'closest by genus' baseline ranks sources by it."""
    return int(np.sum((uriel_vector(a, "genetic") == 1) & (uriel_vector(b, "genetic") == 1)))


def overlap(a: set, b: set) -> float:
    """LangRank's overlap of two type sets: |a ∩ b| / (|a| + |b|), 0 when both are empty."""
    return len(a & b) / (len(a) + len(b)) if a or b else 0.0


@functools.cache
def _train_types(name: str, data_root: str) -> tuple[frozenset, frozenset, int]:
    """(word types, entity surface strings (NER), sentences) of a dataset's train split."""
    spec = DataSpec.parse(name)
    examples = read_split(spec, "train", Path(data_root))
    if spec.task != "ner":
        return frozenset(w for e in examples for w in e["text"].split()), frozenset(), len(examples)
    words, entities = set(), set()
    for example in examples:
        words.update(example["tokens"])
        entity = []
        for token, tag in zip(example["tokens"] + [""], example["tags"] + ["O"]):
            if entity and not tag.startswith("I-"):
                entities.add(" ".join(entity))
                entity = []
            if tag != "O":
                entity.append(token)
    return frozenset(words), frozenset(entities), len(examples)


@functools.cache
def _subword_types(name: str, data_root: str, tokenizer) -> frozenset:
    """The subword types `tokenizer` splits a dataset's train words into."""
    return frozenset(piece for word in _train_types(name, data_root)[0]
                     for piece in tokenizer.tokenize(word))


def data_features(source: str, target: str, data_root: str | Path, tokenizer=None) -> dict:
    """Word, subword (when a tokenizer is given) and entity (NER) overlap of the two train
    splits, and the source's train size in sentences."""
    source_words, source_entities, size = _train_types(source, str(data_root))
    target_words, target_entities, _ = _train_types(target, str(data_root))
    features = {"word_overlap": overlap(source_words, target_words), "source_size": size}
    if tokenizer is not None:
        features["subword_overlap"] = overlap(_subword_types(source, str(data_root), tokenizer),
                                              _subword_types(target, str(data_root), tokenizer))
    if DataSpec.parse(source).task == "ner":
        features["entity_overlap"] = overlap(source_entities, target_entities)
    return features


def pair_features(source: str, target: str, data_root: str | Path | None, tokenizer=None
                  ) -> dict:
    """Every feature of (source, target) dataset names: the URIEL distances, `shared_family_nodes`
    (for the genus baseline) and, when `data_root` is given, the data features (DataError when a
    train split cannot be read)."""
    a, b = language_of(source), language_of(target)
    features = {kind: uriel_distance(a, b, kind) for kind in URIEL_SETS}
    features["shared_family_nodes"] = shared_family_nodes(a, b)
    if data_root is not None:
        features.update(data_features(source, target, data_root, tokenizer))
    return features
