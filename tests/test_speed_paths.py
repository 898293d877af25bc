"""The speed options of a trial (issue 40): bf16 autocast, length-grouped batches, evaluation
batched by length, and the bounded in-memory cache of hidden states. Correctness only: no test
here measures a time."""

import random

import pytest
import torch
from cachetools import LRUCache
from transformers import BertConfig, BertModel

from metaxl_core import frozen
from metaxl_core.config import TrialConfig
from metaxl_core.errors import ConfigError
from metaxl_core.meta import hypergradient
from metaxl_core.model import MetaXLModel
from metaxl_core.sampling import length_grouped_batches
from metaxl_core.train import _loader, autocast, predict, resolve_precision, run_trial
from tests.test_meta import batch as tiny_batch
from tests.test_meta import make_model


def real_sized_model(seed: int = 0) -> MetaXLModel:
    """The trained block at the cached fidelity: 4 BERT layers, 384 wide (e5-small's top)."""
    torch.manual_seed(seed)
    encoder = BertModel(BertConfig(vocab_size=1000, hidden_size=384, num_hidden_layers=4,
                                   num_attention_heads=12, intermediate_size=1536,
                                   attn_implementation="sdpa"), add_pooling_layer=False)
    return MetaXLModel(encoder, 7, "ner", 4, 192).train()


def batch(gen: torch.Generator, n: int, length: int = 48) -> dict:
    ids = torch.randint(5, 1000, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=gen)
    mask[torch.arange(length) >= lengths[:, None]] = 0
    labels = torch.randint(0, 7, (n, length), generator=gen)
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def cosine(a: dict, b: dict) -> float:
    x = torch.cat([a[n].flatten().float() for n in a])
    y = torch.cat([b[n].flatten().float() for n in a])
    return float(x @ y / (x.norm() * y.norm()))


def test_bf16_hypergradient_points_where_the_fp32_one_does():
    """bf16 autocast through the double backward: the hypergradient (and g) of a real-sized
    block keep their fp32 direction (the fp32 one is checked against finite differences in
    tests/test_meta.py)."""
    model = real_sized_model()
    gen = torch.Generator().manual_seed(1)
    source, t1, t2 = batch(gen, 10), batch(gen, 5), batch(gen, 5)
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(2)  # the same dropout masks
        with autocast(precision, torch.device("cpu")):
            results[precision] = hypergradient(model, source, t1, t2, virtual_lr=3e-4)
    (g32, phi32, _), (g16, phi16, _) = results["fp32"], results["bf16"]
    assert all(v.dtype == torch.float32 for v in phi16.values()), "Φ's gradient stays float32"
    assert cosine(phi16, phi32) > 0.95
    assert cosine({n: v for n, v in g16.items() if v is not None},
                  {n: v for n, v in g32.items() if v is not None}) > 0.99
    assert cosine(phi16, phi32) < 1 - 1e-6, "bf16 computed something: not exactly fp32"


def test_precision_field_and_auto(monkeypatch):
    with pytest.raises(ConfigError, match="precision: must be one of"):
        TrialConfig(source="ner:conll2003:en", target="ner:masakhaner2:yor", precision="fp16")
    from metaxl_core import train
    cpu = torch.device("cpu")
    monkeypatch.setattr(train, "bf16_supported", lambda device: True)
    assert resolve_precision("auto", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(train, "bf16_supported", lambda device: False)
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    layer = torch.nn.Linear(4, 4)
    with autocast("bf16", cpu):
        before = layer(torch.ones(2, 4))
        assert before.dtype == torch.bfloat16
        with torch.no_grad():  # an optimizer step inside the trial's one autocast region
            layer.weight.add_(1.0)
        assert not torch.equal(layer(torch.ones(2, 4)), before), "a stale bf16 weight was used"
    with autocast("fp32", cpu):
        assert layer(torch.ones(2, 4)).dtype == torch.float32


TRIAL = dict(source="ner:conll2003:en", target="ner:masakhaner2:yor", encoder="tiny-bert",
             source_train_size=40, target_train_size=30, target_dev_size=30, epochs=4,
             batch_size=10, max_seq_length=48, seed=3, lr=3e-3, warmup_ratio=0.0)


@pytest.mark.parametrize("method", ["metaxl", "joint"])
def test_a_bf16_trial_trains_in_bf16_and_fp32_is_unchanged(method):
    runs = {p: run_trial({**TRIAL, "method": method, "precision": p}) for p in ("fp32", "bf16")}
    default = run_trial({**TRIAL, "method": method})
    assert runs["bf16"]["precision"] == "bf16" and runs["fp32"]["precision"] == "fp32"
    assert default["history"] == runs["fp32"]["history"], "fp32 is the default, unchanged"
    loss = "train/loss_source" if method == "metaxl" else "train/loss"
    curves = {p: [row[loss] for row in runs[p]["history"]] for p in runs}
    assert curves["bf16"] != curves["fp32"]
    assert curves["bf16"] == pytest.approx(curves["fp32"], rel=0.05)
    assert curves["bf16"][-1] < 0.6 * curves["bf16"][0], "it learns: the steps use updated weights"


def pad_share(lengths: list[int], batches: list[list[int]]) -> float:
    cells = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / cells


def test_length_grouped_batches_cover_every_example_once_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.choice([5, 8, 12, 20, 40, 90]) + rng.randrange(4) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 10, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) == 10 for b in batches)
    order = list(range(1000))
    rng.shuffle(order)
    shuffled = [order[i:i + 10] for i in range(0, 1000, 10)]
    assert pad_share(lengths, batches) < 0.5 * pad_share(lengths, shuffled)
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True), \
        "long and short batches interleave"
    assert length_grouped_batches(lengths, 10, seed=1) == batches
    assert length_grouped_batches(lengths, 10, seed=2) != batches


def test_the_trial_loader_groups_by_length_only_when_asked():
    rng = random.Random(0)
    features = [{"input_ids": list(range(rng.choice([4, 30])))} for _ in range(200)]
    lengths = [len(f["input_ids"]) for f in features]
    index = {id(f): i for i, f in enumerate(features)}
    as_indices = lambda loader: [[index[id(f)] for f in b] for b in loader]  # noqa: E731
    grouped = as_indices(_loader(features, list, 10, seed=5, group_by_length=True))
    plain = as_indices(_loader(features, list, 10, seed=5))
    assert sorted(sum(grouped, [])) == sorted(sum(plain, [])) == list(range(200))
    assert pad_share(lengths, grouped) < 0.5 * pad_share(lengths, plain)


def test_predictions_batched_by_length_come_back_in_the_examples_order():
    from metaxl_core.data import Encoded
    model = make_model("bert", task="ner").float()
    gen = torch.Generator().manual_seed(4)
    features, gold = [], []
    for length in [9, 4, 12, 6, 12, 5, 8, 11]:
        b = tiny_batch(gen, 1, length)
        mask = b["attention_mask"][0].bool()
        features.append({"input_ids": b["input_ids"][0][mask].tolist(),
                         "labels": b["labels"][0][mask].tolist()})
        gold.append(["O"] * sum(1 for x in features[-1]["labels"] if x != -100))

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        pad = lambda values, fill: [v + [fill] * (width - len(v)) for v in values]  # noqa: E731
        return {"input_ids": torch.tensor(pad([r["input_ids"] for r in rows], 1)),
                "attention_mask": torch.tensor(pad([[1] * len(r["input_ids"]) for r in rows], 0)),
                "labels": torch.tensor(pad([r["labels"] for r in rows], -100))}

    labels = ["O", "B-PER", "I-PER"]
    encoded = Encoded(features=features, gold=gold, n_truncated=0, n_unk_words=0)
    together = predict(model, encoded, collate, labels, "ner", torch.device("cpu"))
    alone = [predict(model, Encoded([f], [g], 0, 0), collate, labels, "ner",
                     torch.device("cpu"))[0] for f, g in zip(features, gold)]
    assert together == alone and len({tuple(p) for p in together}) > 1


def test_the_hidden_state_memory_keeps_the_latest_splits_within_its_budget(monkeypatch, tmp_path):
    monkeypatch.setenv("METAXL_CACHE", str(tmp_path))
    state = lambda n: [torch.zeros(n, 256)]  # noqa: E731  (n x 1 KiB)
    computed = []

    def compute(bottom, features, collator):
        computed.append(len(features))
        return state(len(features))

    monkeypatch.setattr(frozen, "compute_states", compute)
    monkeypatch.setattr(frozen, "_MEMORY", LRUCache(maxsize=3 * 1024 * 100,
                                                    getsizeof=frozen._states_bytes))
    splits = {n: [{"input_ids": [n, i]} for i in range(n)] for n in (100, 101, 102, 400)}
    for n in (100, 101, 102):
        frozen._split_states(None, ["e", "w", 1], splits[n], None)
    assert len(frozen._MEMORY) == 2, "the third split exceeds the budget: the oldest goes"
    assert frozen._MEMORY.currsize <= frozen._MEMORY.maxsize
    frozen._split_states(None, ["e", "w", 1], splits[400], None)  # larger than the budget:
    assert len(frozen._MEMORY) == 2 and computed == [100, 101, 102, 400]  # read, not kept
    assert frozen._split_states(None, ["e", "w", 1], splits[100], None)[0].shape == (100, 256)
    assert computed == [100, 101, 102, 400], "evicted from memory, read back from disk"
