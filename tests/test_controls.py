"""MetaXL as released and its controls: the official RTN, the frozen-RTN and T1-only joint
controls, the first-order mode under dropout, the virtual step size, the target batch split,
clipping, the truncation cut and the evaluation path. Each test names the bug it catches."""

import math
import re
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from metaxl_core import train
from metaxl_core.config import TrialConfig
from metaxl_core.errors import ConfigError
from metaxl_core.meta import finite_difference_hypergradient, hypergradient, metaxl_step, plain_step
from metaxl_core.model import IdentityRTN, MetaXLModel, OfficialRTN
from tests.conftest import PROJECT_ROOT
from tests.test_meta import LABELS, LAYERS, VOCAB, batch, make_model, tiny_encoder
from tests.test_train import config


# ---------------------------------------------------------------------------- the RTN designs
def test_official_rtn_is_the_released_formula_with_a_detached_input():
    torch.manual_seed(0)
    rtn = OfficialRTN(16, 8)
    w1, b1, w2, b2 = rtn.net[0].weight, rtn.net[0].bias, rtn.net[2].weight, rtn.net[2].bias
    assert w2.shape == (17, 8), "the last layer has d + 1 outputs: the last one gates"
    assert torch.equal(b1, torch.zeros(8)) and torch.equal(b2, torch.zeros(17))
    for w in (w1, w2):  # Xavier normal: std sqrt(2 / (fan_in + fan_out))
        assert abs(w.std().item() / math.sqrt(2 / sum(w.shape)) - 1) < 0.25
    hidden = torch.randn(2, 5, 16, requires_grad=True)
    out = torch.relu(hidden @ w1.T + b1) @ w2.T + b2
    expected = hidden + torch.sigmoid(out[..., -1:]) * out[..., :-1]
    torch.testing.assert_close(rtn(hidden), expected)
    rtn(hidden).sum().backward()
    torch.testing.assert_close(hidden.grad, torch.ones_like(hidden),
                               msg="the RTN's input is detached: h gets gradient through h alone")


def test_the_identity_design_starts_near_the_identity_and_the_official_one_does_not():
    torch.manual_seed(0)
    hidden = torch.randn(4, 6, 16)
    relative = {cls.__name__: ((cls(16, 8)(hidden) - hidden).norm(dim=-1) / hidden.norm(dim=-1))
                .mean().item() for cls in (IdentityRTN, OfficialRTN)}
    assert relative["IdentityRTN"] < 0.05 and relative["OfficialRTN"] > 0.1, relative


def test_official_rtns_in_one_pass_are_refused():
    with pytest.raises(ValueError, match="softmax"):
        MetaXLModel(tiny_encoder("bert"), LABELS, "ner", (0, LAYERS), 4)
    MetaXLModel(tiny_encoder("bert"), LABELS, "ner", (0, LAYERS), 4, rtn_mixing="softmax")
    with pytest.raises(ConfigError, match="rtn_layers.*softmax"):
        TrialConfig(rtn_layers="0,2")
    TrialConfig(rtn_layers="0,2", rtn_design="identity")
    with pytest.raises(ConfigError, match="rtn_design"):
        TrialConfig(rtn_design="tied")


# ---------------------------------------------------------------------------- the bi-level step
def test_truncation_changes_the_hypergradient_only_never_g():
    """Catches: truncated mode giving the θ below the RTN no (or a different) gradient."""
    model = make_model("bert", rtn_layer=1)
    gen = torch.Generator().manual_seed(21)
    source, t1, t2 = batch(gen, 3, 7), batch(gen, 2, 6), batch(gen, 2, 5)
    g_exact = hypergradient(model, source, t1, t2, 0.5)[0]
    g_trunc = hypergradient(model, source, t1, t2, 0.5, truncated=True)[0]
    below = [n for n in g_exact if n not in model.theta_above_rtn()]
    assert below and all(g_exact[n] is not None for n in below if "embeddings" in n)
    for name, value in g_exact.items():
        if value is None:
            assert g_trunc[name] is None, name
        else:
            torch.testing.assert_close(g_trunc[name], value, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("rtn_layer", range(LAYERS + 1))
def test_layers_above_the_rtn_are_counted_from_the_names(rtn_layer):
    """Catches an off-by-one in theta_above_rtn: the expected set comes from parameter names."""
    model = make_model("bert", rtn_layer)
    expected = {n for n in model.theta() if n.startswith("classifier.")
                or (m := re.match(r"encoder\.encoder\.layer\.(\d+)\.", n)) and int(m[1]) >= rtn_layer}
    per_layer = sum(1 for n in model.theta() if n.startswith("encoder.encoder.layer.0."))
    assert len(expected) == per_layer * (LAYERS - rtn_layer) + 2
    assert set(model.theta_above_rtn()) == expected


def sgd_change(model, step) -> float:
    """Norm of the θ update one call of `step(optimizer)` makes with plain SGD at lr 1."""
    before = {n: p.detach().clone() for n, p in model.theta().items()}
    step(torch.optim.SGD(model.theta().values(), lr=1.0))
    return math.sqrt(sum((p.detach() - before[n]).pow(2).sum().item()
                         for n, p in model.theta().items()))


@pytest.mark.parametrize("kind", ["metaxl", "plain"])
def test_gradients_are_clipped_to_max_grad_norm(kind):
    """Catches: clipping removed from either step."""
    gen = torch.Generator().manual_seed(22)
    source, t1, t2 = batch(gen, 3, 7), batch(gen, 2, 6), batch(gen, 2, 5)
    changes = {}
    for max_norm in (1e-3, 0.0):
        model = make_model("bert", 1)
        phi_opt = torch.optim.Adam(model.phi().values(), lr=1e-3)
        if kind == "metaxl":
            def step(opt, model=model, phi_opt=phi_opt, max_norm=max_norm):
                metaxl_step(model, opt, phi_opt, source, t1, t2, virtual_lr=0.1, mode="exact",
                            max_grad_norm=max_norm)
        else:
            def step(opt, model=model, max_norm=max_norm):
                plain_step(model, opt, [source, t1], max_norm)
        changes[max_norm] = sgd_change(model, step)
    assert changes[1e-3] == pytest.approx(1e-3, rel=1e-6)
    assert changes[0.0] > 1e-2, "unclipped, the step is larger (the test can fail)"


def dropout_model() -> MetaXLModel:
    """Float64, hidden dropout 0.1 (attention dropout 0, so every pass draws the same masks in the
    same order whichever attention kernel it runs)."""
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=LAYERS,
                                   num_attention_heads=2, intermediate_size=24,
                                   hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0,
                                   max_position_embeddings=40), add_pooling_layer=False)
    return MetaXLModel(encoder, LABELS, "ner", 1, rtn_width=4).double().train()


def test_first_order_mode_reuses_the_dropout_masks_of_its_source_pass():
    """Catches: the ±r·v passes of the first-order mode drawing fresh dropout masks. With the
    same masks it equals the exact hypergradient seed by seed (same seed, same masks), so the
    averages over seeds agree too; with fresh masks the central difference is mask noise / 2r."""
    model = dropout_model()
    gen = torch.Generator().manual_seed(23)
    source, t1, t2 = batch(gen, 4, 7), batch(gen, 2, 6), batch(gen, 2, 5)
    exact_sum = fd_sum = None
    for seed in range(6):
        torch.manual_seed(seed)
        exact = torch.cat([g.flatten() for g in hypergradient(model, source, t1, t2, 0.5)[1].values()])
        torch.manual_seed(seed)
        fd = torch.cat([g.flatten() for g in finite_difference_hypergradient(
            model, source, t1, t2, 0.5, epsilon=1e-5)[1].values()])
        assert (fd - exact).norm() < 1e-4 * exact.norm(), f"seed {seed}: masks differ"
        exact_sum = exact if exact_sum is None else exact_sum + exact
        fd_sum = fd if fd_sum is None else fd_sum + fd
    assert torch.cosine_similarity(exact_sum, fd_sum, dim=0) > 0.999


def test_first_order_mode_leaves_the_random_stream_where_the_exact_mode_does():
    """The replays must not rewind the random stream: later steps draw fresh masks."""
    model = dropout_model()
    gen = torch.Generator().manual_seed(24)
    source, t1, t2 = batch(gen, 4, 7), batch(gen, 2, 6), batch(gen, 2, 5)
    torch.manual_seed(5)
    hypergradient(model, source, t1, t2, 0.5)
    after_exact = torch.rand(4)
    torch.manual_seed(5)
    finite_difference_hypergradient(model, source, t1, t2, 0.5)
    torch.testing.assert_close(torch.rand(4), after_exact)


# ---------------------------------------------------------------------------- the training loop
def spy(monkeypatch, name: str) -> list[dict]:
    """Record every call of train.<name> (keyword view of its arguments), still running it."""
    calls = []
    original = getattr(train, name)

    def recording(model, optimizer, *args, **kwargs):
        calls.append({"args": args, **kwargs, "lr": optimizer.param_groups[0]["lr"],
                      "phi_lr": args[0].param_groups[0]["lr"] if name == "metaxl_step" else None})
        return original(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(train, name, recording)
    return calls


def rows(batch_dict: dict) -> list[tuple]:
    return [tuple(ids[mask.bool()].tolist()) for ids, mask
            in zip(batch_dict["input_ids"], batch_dict["attention_mask"])]


def test_virtual_step_uses_the_learning_rate_of_that_step(synth_root, monkeypatch):
    """Catches: a virtual step of meta_lr, of the peak lr, or of the previous step's lr; and a Φ
    learning rate without the schedule."""
    calls = spy(monkeypatch, "metaxl_step")
    cfg = config(synth_root, epochs=2, warmup_ratio=0.25, lr=1e-3, meta_lr=1e-5)
    train.run_trial(cfg)
    total = math.ceil(cfg.source_train_size / cfg.batch_size) * cfg.epochs
    warmup = int(cfg.warmup_ratio * total)
    expected = [cfg.lr * (i / warmup if i < warmup else (total - i) / (total - warmup))
                for i in range(total)]
    assert [c["virtual_lr"] for c in calls] == pytest.approx(expected)
    assert [c["lr"] for c in calls] == pytest.approx(expected), "the optimizer's own lr"
    assert [c["phi_lr"] for c in calls] == pytest.approx([x * cfg.meta_lr / cfg.lr for x in expected]), \
        "as released, meta_lr has the same warm-up and decay"


def test_meta_batch_is_disjoint_from_the_train_batch(synth_root, monkeypatch):
    """Catches: T2 overlapping T1, or T1/T2 not splitting the target batch."""
    calls = spy(monkeypatch, "metaxl_step")
    cfg = config(synth_root, epochs=1, meta_fraction=0.3)
    train.run_trial(cfg)
    n_meta = round(cfg.batch_size * cfg.meta_fraction)
    for call in calls:
        source, t1, t2 = call["args"][1:4]
        assert len(rows(t1)) == cfg.batch_size - n_meta and len(rows(t2)) == n_meta
        assert not set(rows(t1)) & set(rows(t2))
        assert not set(rows(source)) & set(rows(t1) + rows(t2))


@pytest.mark.parametrize("method,target_rows", [("joint", 10), ("joint_t1", 5), ("frozen_rtn", 5)])
def test_each_control_sees_the_target_examples_it_promises(synth_root, monkeypatch, method,
                                                           target_rows):
    """Catches: joint training on half the target batch, or a control seeing the whole batch."""
    calls = spy(monkeypatch, "plain_step")
    train.run_trial(config(synth_root, method=method, epochs=1, batch_size=10))
    assert calls
    for call in calls:
        batches = call["args"][0]
        if method == "frozen_rtn":
            assert len(batches) == 1 and call["rtn_batch"] is not None
            assert len(rows(batches[0])) == target_rows
        else:
            assert len(batches) == 2 and call.get("rtn_batch") is None
            assert [len(rows(b)) for b in batches] == [10, target_rows]


def test_frozen_rtn_keeps_its_initialisation_and_metaxl_moves_it(synth_root):
    """The controls differ from metaxl where they should, and the movement metric is logged."""
    states = {}
    for method in ("frozen_rtn", "metaxl"):
        cfg = config(synth_root, method=method, epochs=2, meta_lr=1e-2)
        init = train.build_trial(cfg, torch.device("cpu"))[0].state_dict()
        last: dict = {}
        results = train.run_trial(cfg, report=lambda metrics, ckpt, last=last: last.update(ckpt))
        assert results["rtn_movement_init"]["rtn/movement"] > 0.1, "official: not the identity"
        assert all("rtn/movement" in h for h in results["history"])
        states[method] = [torch.equal(init[k], last["model"][k]) for k in init if k.startswith("rtn")]
    assert states["frozen_rtn"] and all(states["frozen_rtn"])
    assert not any(states["metaxl"])
    joint = train.run_trial(config(synth_root, method="joint", epochs=1))
    assert "rtn/movement" not in joint["history"][0] and joint["rtn_movement_init"] == {}


def test_evaluation_never_runs_an_rtn(synth_root):
    """Catches: the RTN switched on in train.evaluate (checked on the evaluation path itself)."""
    cfg = config(synth_root, epochs=1)
    model, task_data, splits, collator = train.build_trial(cfg, torch.device("cpu"))
    calls = []
    for module in model.rtn.values():
        module.register_forward_hook(lambda *_: calls.append(1))
    scores = train.evaluate(model, splits["target_dev"], collator, task_data.labels, "ner",
                            torch.device("cpu"))
    assert calls == [] and "f1" in scores
    first = splits["target_dev"].features[:2]
    b = collator(first)
    model(b["input_ids"], b["attention_mask"], use_rtn=True)
    assert calls, "the hook counts RTN calls (the test can fail)"


def test_controls_are_sweepable():
    from sweeps.settings import DIMENSIONS
    assert "meta_lr" not in [d for d, methods in DIMENSIONS.items() if "frozen_rtn" in methods]
    assert {"rtn_width", "rtn_layer", "rtn_design"} <= {d for d, m in DIMENSIONS.items()
                                                       if "frozen_rtn" in m}
    assert [d for d, m in DIMENSIONS.items() if "joint_t1" in m] == ["lr"]


def test_rtn_movement_is_per_layer_and_zero_for_an_identity(synth_root):
    model = make_model("bert", (0, LAYERS), rtn_mixing="softmax")
    b = batch(torch.Generator().manual_seed(25), 3, 7)
    moved = model.rtn_movement(b)
    assert set(moved) == {0, LAYERS} and all(v > 0 for v in moved.values())
    for rtn in model.rtn.values():
        for p in rtn.parameters():
            nn.init.zeros_(p)
    assert all(v == 0 for v in model.rtn_movement(b).values())


def test_a_sweep_plans_both_controls_with_their_own_dimensions():
    proc = subprocess.run([sys.executable, "sweeps/pairs.py", "--dry-run", "--methods", "metaxl",
                           "frozen_rtn", "joint_t1"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if "_ner-" in line}
    assert rows["frozen_rtn_ner-masakhaner2-yor"].endswith("source, rtn_width, rtn_layer, lr")
    assert rows["joint_t1_ner-masakhaner2-yor"].endswith("source, lr")
    assert rows["metaxl_ner-masakhaner2-yor"].endswith("lr, meta_lr")
