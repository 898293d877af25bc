"""The cached fidelity (`freeze_layers: k`): the embeddings and layers 1..k are frozen, their
output is computed once per example and cached, and training runs layers k+1..L only.

    top, splits, collator = frozen_fidelity(encoder, name, k, splits, collator)

The hidden states after layer k are computed in eval mode (no dropout), stored unpadded per
example in float32, kept in memory for the worker process (the splits used last, up to
METAXL_HIDDEN_CACHE_MB) and on disk under `<cache>/hidden/<key>.pt`, one file per split, keyed
by the encoder's name, a fingerprint of its frozen weights, k and the split's token ids, so
repeated trials, other methods on the same data and resumed sweeps skip the computation.
Batches carry the cached states in place of the token ids (`MetaXLModel(..., frozen_layers=k)`
reads them).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from cachetools import LRUCache
from torch.nn.utils.rnn import pad_sequence

from metaxl_core.encoders import cache_root
from metaxl_core.model import split_encoder

BATCH_SIZE = 64


@functools.lru_cache(maxsize=4)
def split_once(encoder, frozen_layers: int):
    """`split_encoder` once per process and encoder (trials deep-copy the top), with the
    fingerprint of the frozen bottom's weights."""
    bottom, top = split_encoder(encoder, frozen_layers)
    return bottom.eval(), top, _fingerprint(bottom)


def frozen_fidelity(encoder, encoder_name: str, frozen_layers: int, splits: dict, collator):
    """(top encoder to copy, splits whose features carry "hidden", a collator for them)."""
    bottom, top, weights = split_once(encoder, frozen_layers)
    hidden = {name: _split_states(bottom, [encoder_name, weights, frozen_layers], s.features,
                                  collator) for name, s in splits.items()}
    splits = {name: dataclasses.replace(s, features=[{**f, "hidden": h} for f, h in
                                                     zip(s.features, hidden[name])])
              for name, s in splits.items()}
    return top, splits, functools.partial(collate_cached, collator)


def collate_cached(collator, features: list[dict]) -> dict:
    """`collator`'s batch with the padded cached states, (B, T, d), as its "input_ids"."""
    batch = collator([{k: v for k, v in f.items() if k != "hidden"} for f in features])
    batch["input_ids"] = pad_sequence([f["hidden"] for f in features], batch_first=True)
    return batch


def _states_bytes(states: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in states)


# The worker process's in-memory copy of the splits' states it used last, least recently used
# dropped first once they exceed METAXL_HIDDEN_CACHE_MB (default 2048) in all; a split larger
# than that is read from disk each time. Each entry is one split (train, dev or test of one
# language) for one encoder, frozen depth and tokenisation.
_MEMORY = LRUCache(maxsize=int(os.environ.get("METAXL_HIDDEN_CACHE_MB", "2048")) * 2**20,
                   getsizeof=_states_bytes)


def _split_states(bottom, model_key: list, features: list[dict], collator) -> list[torch.Tensor]:
    """One split's states: from memory, else from disk, else computed and stored. The key is
    the model's and the split's content (its token ids), so any trial config that tokenises to
    the same split shares it. An empty split (source only's target train) caches nothing."""
    if not features:
        return []
    ids = [f["input_ids"] for f in features]
    key = hashlib.sha256(json.dumps([model_key, ids]).encode()).hexdigest()[:24]
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_root() / "hidden" / f"{key}.pt"
    if path.exists():
        states = torch.load(path, weights_only=True)
    else:
        print(f"caching the hidden states after layer {model_key[2]} of {len(features)} "
              f"examples (once) in {path}", flush=True)
        states = compute_states(bottom, features, collator)
        _save(states, path)
    if _states_bytes(states) <= _MEMORY.maxsize:
        _MEMORY[key] = states
    return states


@torch.no_grad()
def compute_states(bottom, features: list[dict], collator) -> list[torch.Tensor]:
    """The hidden states after the frozen layers, one unpadded (tokens, d) tensor per example."""
    states = []
    for start in range(0, len(features), BATCH_SIZE):
        batch = collator(features[start:start + BATCH_SIZE])
        out = bottom(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        lengths = batch["attention_mask"].sum(1).tolist()
        states += [row[:n].clone() for row, n in zip(out.last_hidden_state, lengths)]
    return states


def _fingerprint(module) -> str:
    """Cheap identity of the frozen weights: per-tensor sums and norms."""
    with torch.no_grad():
        values = [(p.sum(dtype=torch.float64).item(),
                   torch.linalg.vector_norm(p, dtype=torch.float64).item())
                  for p in module.state_dict().values() if p.is_floating_point()]
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


def _save(states: list[torch.Tensor], path: Path) -> None:
    """Atomically: a cache file is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    torch.save(states, tmp)
    os.replace(tmp, path)
