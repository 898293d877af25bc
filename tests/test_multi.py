"""Several sources and several RTN layers: per-source RTN routing, softmax mixing of per-layer
losses, source sampling; the new hypergradient paths are checked numerically as in test_meta."""

import io
import random

import pytest
import torch

from metaxl_core.config import TrialConfig, source_label
from metaxl_core.data import load_task_data
from metaxl_core.errors import ConfigError
from metaxl_core.meta import finite_difference_hypergradient, hypergradient, metaxl_step
from metaxl_core.model import MetaXLModel
from metaxl_core.sampling import SourceSampler
from metaxl_core.train import run_trial
from tests.conftest import synthetic_split
from tests.test_meta import (DESIGNS, LABELS, LAYERS, batch, make_model, meta_loss_after_virtual_step,
                             tiny_encoder)


def perturbed_meta_loss(model, phi, direction, eps, source, t1, t2, eta, truncated, source_index):
    """Central difference of L_meta(θ - η g(Φ)) along `direction` (the FD reference)."""
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for n, p in phi.items():
                p.add_(sign * eps * direction[n])
        values.append(meta_loss_after_virtual_step(model, source, t1, t2, eta, truncated,
                                                   source_index))
        with torch.no_grad():
            for n, p in phi.items():
                p.sub_(sign * eps * direction[n])
    return (values[0] - values[1]) / (2 * eps)


CASES = [(*case, design) for design in DESIGNS for case in [
    # (rtn layers, rtn sets, mixing, truncated, source index)
    ((LAYERS,), 2, "sequential", False, 1),
    ((1,), 3, "sequential", True, 2),
    ((0, LAYERS), 1, "softmax", False, 0),
    ((1, LAYERS), 1, "softmax", True, 0),
    ((0, LAYERS), 2, "softmax", False, 1),
]]


@pytest.mark.parametrize("layers,sets,mixing,truncated,source_index,design", CASES)
def test_new_hypergradient_paths_match_finite_differences(layers, sets, mixing, truncated,
                                                          source_index, design):
    model = make_model("bert", layers, rtn_sets=sets, rtn_mixing=mixing, rtn_design=design)
    if model.rtn_mix is not None:
        with torch.no_grad():
            for p in model.rtn_mix.values():
                p.normal_(0.0, 1.0)
    gen = torch.Generator().manual_seed(11)
    source, t1, t2 = batch(gen, 3, 7), batch(gen, 2, 6), batch(gen, 2, 5)
    eta = 0.5
    _, phi_grads, _ = hypergradient(model, source, t1, t2, eta, truncated=truncated,
                                    source_index=source_index)
    phi = model.phi(source_index)
    assert set(phi_grads) == set(phi)
    if sets > 1:  # only the routed RTNs get a hypergradient
        assert len(phi) * sets == len(model.phi()) and all(f"_s{source_index}" in n or
                                                            n.startswith(f"rtn_mix.{source_index}")
                                                            for n in phi)
    if mixing == "softmax":
        mix = [n for n in phi if n.startswith("rtn_mix")]
        assert mix and phi_grads[mix[0]].abs().sum() > 1e-8, "the mixing weights must learn"
    for direction_seed in range(3):
        d = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(direction_seed),
                            dtype=p.dtype) for n, p in phi.items()}
        analytic = sum((phi_grads[n] * d[n]).sum() for n in phi).item()
        numeric = perturbed_meta_loss(model, phi, d, 1e-6, source, t1, t2, eta, truncated,
                                      source_index)
        assert abs(analytic) > 1e-6
        assert abs(analytic - numeric) / abs(numeric) < 1e-4, (analytic, numeric)


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("layers,sets,mixing", [((LAYERS,), 2, "sequential"),
                                                ((0, LAYERS), 1, "softmax")])
def test_finite_difference_hypergradient_covers_the_new_paths(layers, sets, mixing, design):
    model = make_model("xlmr", layers, rtn_sets=sets, rtn_mixing=mixing, rtn_design=design)
    gen = torch.Generator().manual_seed(12)
    source, t1, t2 = batch(gen, 3, 7), batch(gen, 2, 6), batch(gen, 2, 5)
    index = sets - 1
    _, exact, _ = hypergradient(model, source, t1, t2, 0.5, source_index=index)
    _, approx, _ = finite_difference_hypergradient(model, source, t1, t2, 0.5, epsilon=1e-5,
                                                   source_index=index)
    assert set(exact) == set(approx)
    for name in exact:
        torch.testing.assert_close(approx[name], exact[name], rtol=1e-5, atol=1e-9)


def test_each_source_batch_goes_through_its_own_rtn():
    model = make_model("bert", 1, rtn_sets=2).eval()
    b = batch(torch.Generator().manual_seed(13), 3, 7)
    with torch.no_grad():
        before = [model(b["input_ids"], b["attention_mask"], use_rtn=True, source_index=i)
                  for i in (0, 1)]
        assert not torch.allclose(before[0], before[1]), "two RTNs, two transformations"
        model.rtn["1_s0"].net[2].bias.add_(1.0)  # change source 0's RTN only
        after = [model(b["input_ids"], b["attention_mask"], use_rtn=True, source_index=i)
                 for i in (0, 1)]
        plain = model(b["input_ids"], b["attention_mask"])
    assert not torch.allclose(after[0], before[0]) and torch.equal(after[1], before[1])
    assert not torch.allclose(plain, after[0]) and not torch.allclose(plain, after[1])
    with pytest.raises(ValueError, match="source_index 2 out of range"):
        model(b["input_ids"], b["attention_mask"], use_rtn=True, source_index=2)


def test_a_step_on_one_source_moves_only_its_own_rtn():
    model = make_model("bert", LAYERS, rtn_sets=2)
    theta_opt = torch.optim.AdamW(model.theta().values(), lr=1e-2)
    phi_opt = torch.optim.Adam(model.phi().values(), lr=1e-2)
    gen = torch.Generator().manual_seed(14)
    step = dict(virtual_lr=1e-2, mode="exact", max_grad_norm=1.0)
    metaxl_step(model, theta_opt, phi_opt, batch(gen, 3, 7), batch(gen, 2, 6), batch(gen, 2, 5),
                source_index=0, **step)  # source 0's RTN now has Adam momentum
    frozen = {n: p.detach().clone() for n, p in model.phi(0).items()}
    moving = {n: p.detach().clone() for n, p in model.phi(1).items()}
    metaxl_step(model, theta_opt, phi_opt, batch(gen, 3, 7), batch(gen, 2, 6), batch(gen, 2, 5),
                source_index=1, **step)
    assert all(torch.equal(p, frozen[n]) for n, p in model.phi(0).items()), \
        "momentum must not move an RTN whose source was not in the step"
    assert all(not torch.equal(p, moving[n]) for n, p in model.phi(1).items())


def test_softmax_mixing_is_the_weighted_sum_of_single_layer_losses():
    model = make_model("bert", (0, LAYERS), rtn_mixing="softmax").eval()
    single = {k: make_model("bert", k).eval() for k in (0, LAYERS)}
    for k, other in single.items():  # the same encoder and head, and layer k's RTN
        other.load_state_dict({**model.exportable_state_dict(),
                               **{f"rtn.{k}.{n}": p for n, p in model.rtn[str(k)].state_dict().items()}})
    with torch.no_grad():
        model.rtn_mix["0"].copy_(torch.tensor([0.3, -1.2], dtype=torch.float64))
    b = batch(torch.Generator().manual_seed(15), 3, 7)
    weights = torch.softmax(torch.tensor([0.3, -1.2], dtype=torch.float64), 0)
    expected = sum(w * single[k].loss(b, use_rtn=True) for w, k in zip(weights, (0, LAYERS)))
    torch.testing.assert_close(model.loss(b, use_rtn=True), expected)
    with pytest.raises(ValueError, match="mixes losses: pass labels"):
        model(b["input_ids"], b["attention_mask"], use_rtn=True)
    assert "rtn_mix.0" not in model.exportable_state_dict()


# ------------------------------------------------------------------------------ sampling
def sampler(sizes, mode, lr=0.5) -> SourceSampler:
    names = ",".join(f"ner:d:l{i}" for i in range(len(sizes)))
    return SourceSampler(TrialConfig(source=names, target="ner:d:t", source_sampling=mode,
                                     sampling_lr=lr), sizes)


@pytest.mark.parametrize("mode,expected", [("proportional", [0.75, 0.25]), ("uniform", [0.5, 0.5])])
def test_fixed_sampling_draws_sources_at_their_rates(mode, expected):
    s = sampler([300, 100], mode)
    features = [{"i": i} for i in range(400)]
    drawn = [i for i, b in s.batches(features, lambda rows: rows, 4, 4000, seed=1)]
    rates = [drawn.count(i) / len(drawn) for i in (0, 1)]
    assert rates == pytest.approx(expected, abs=0.03)
    assert s.steps == [drawn.count(0), drawn.count(1)]
    one = next(b for i, b in s.batches(features, lambda rows: rows, 4, 50, seed=2) if i == 1)
    assert all(row["i"] >= 300 for row in one), "a batch of source 1 holds only its examples"


def test_learned_sampling_follows_the_reward_by_reinforce():
    s = sampler([100, 100], "learned", lr=0.5)
    s.update(0, 0.2)  # the first reward sets the baseline: no move
    assert s.probabilities().tolist() == pytest.approx([0.5, 0.5])
    s.update(1, 0.6)  # advantage 0.4 on source 1: logits += 0.5 * 0.4 * ([0, 1] - [.5, .5])
    assert s.logits.tolist() == pytest.approx([-0.1 + torch.log(torch.tensor(100.0)).item(),
                                               0.1 + torch.log(torch.tensor(100.0)).item()])
    assert s.baseline == pytest.approx(0.9 * 0.2 + 0.1 * 0.6)
    fixed = sampler([100, 100], "proportional")
    fixed.update(1, 0.6)
    assert fixed.probabilities().tolist() == pytest.approx([0.5, 0.5])


# ------------------------------------------------------------------------------ trials
@pytest.fixture(scope="module")
def three_languages(tmp_path_factory):
    """good and tgt share the labelling; bad swaps PER and LOC (a source that hurts)."""
    root = tmp_path_factory.mktemp("multi")
    rng = random.Random(0)
    for lang, swap in (("good", False), ("bad", True), ("tgt", False)):
        folder = root / "ner" / "synth" / lang
        folder.mkdir(parents=True)
        for split, n in (("train", 60), ("dev", 20), ("test", 20)):
            (folder / f"{split}.txt").write_text(synthetic_split(rng, n, swap), encoding="utf-8")
    return root


def multi_config(root, **changes) -> TrialConfig:
    base = dict(task="ner", source="ner:synth:good,ner:synth:bad", target="ner:synth:tgt",
                data_root=str(root), source_train_size=60, target_train_size=40, epochs=3,
                batch_size=10, lr=3e-3, meta_lr=1e-3, warmup_ratio=0.0, max_seq_length=32,
                encoder="tiny-bert", seed=3, rtn_layer=1)
    return TrialConfig.from_dict({**base, **changes})


def test_several_sources_are_read_sampled_and_share_labels(three_languages):
    cfg = multi_config(three_languages)
    data = load_task_data(cfg)
    assert data.source_sizes == [60, 60] and len(data.source_train) == 120
    assert set(data.notes["files"]) >= {"source_train:ner:synth:good", "source_train:ner:synth:bad"}
    assert data.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert source_label(cfg.source) == "good+bad"


@pytest.mark.parametrize("bad,match", [
    ({"source": "ner:synth:good,ner:synth:good"}, "lists a source twice"),
    ({"source": "ner:synth:good,ner:synth:tgt"}, "includes the target"),
    ({"source": "ner:synth:good,nonsense"}, "task:dataset:language"),
    ({"method": "joint", "source_sampling": "learned"}, "needs method metaxl"),
    ({"source_sampling": "often"}, "source_sampling: must be one of"),
    ({"rtn_mixing": "average"}, "rtn_mixing: must be one of"),
])
def test_bad_multi_source_settings_are_named(three_languages, bad, match):
    with pytest.raises(ConfigError, match=match):
        multi_config(three_languages, **bad)


def test_learned_sampling_prefers_the_source_that_helps_the_target(three_languages):
    results = run_trial(multi_config(three_languages, source_sampling="learned", sampling_lr=1.0,
                                     rtn_per_source=True))
    last = results["history"][-1]
    assert last["train/p_synth_good"] > 0.6 > last["train/p_synth_bad"], results["history"]
    assert last["train/steps_synth_good"] > last["train/steps_synth_bad"]
    uniform = run_trial(multi_config(three_languages, source_sampling="uniform", epochs=1))
    assert uniform["history"][-1]["train/p_synth_good"] == pytest.approx(0.5)


@pytest.mark.parametrize("changes", [
    {"rtn_per_source": True, "source_sampling": "learned"},
    {"rtn_layers": "0,2", "rtn_mixing": "softmax", "rtn_layer": None},
    {"method": "joint"},
])
def test_multi_source_runs_resume_exactly(three_languages, changes):
    cfg = multi_config(three_languages, epochs=2, **changes)
    saved = []

    def report(metrics, state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        saved.append(buffer.getvalue())

    full = run_trial(cfg, report=report)
    resumed = run_trial(cfg, resume_from=torch.load(io.BytesIO(saved[0]), weights_only=True))
    assert resumed["history"] == full["history"]


def test_model_rejects_bad_rtn_options():
    with pytest.raises(ValueError, match="rtn_mixing"):
        MetaXLModel(tiny_encoder("bert"), LABELS, "ner", 1, 4, rtn_mixing="mean")
