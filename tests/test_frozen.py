"""The cached fidelity (freeze_layers): same numbers as the uncached model, exact hypergradients
through the cut, a disk cache that resumed trials reuse, clear errors."""

import io

import pytest
import torch

from metaxl_core import frozen, train
from metaxl_core.errors import ConfigError
from metaxl_core.meta import hypergradient
from metaxl_core.model import MetaXLModel, split_encoder
from tests.test_meta import LABELS, LAYERS, batch, meta_loss_after_virtual_step, tiny_encoder
from tests.test_train import config


def cached_twin(frozen_layers: int, rtn_layer: int, design: str = "official"):
    """A full model and its cached twin (same weights): (full, bottom, cached)."""
    torch.manual_seed(0)
    full = MetaXLModel(tiny_encoder("xlmr"), LABELS, "ner", rtn_layer, 4, rtn_design=design).double()
    with torch.no_grad():
        for p in full.phi().values():
            p.normal_(0.0, 0.5)
    bottom, top = split_encoder(full.encoder, frozen_layers)  # copies of the trained weights
    cached = MetaXLModel(top, LABELS, "ner", rtn_layer, 4, rtn_design=design,
                         frozen_layers=frozen_layers).double()
    heads = {k: v for k, v in full.state_dict().items() if not k.startswith("encoder.")}
    assert not cached.load_state_dict(heads, strict=False).unexpected_keys
    return full, bottom.eval(), cached


def as_cached(bottom, b: dict) -> dict:
    with torch.no_grad():
        hidden = bottom(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    return {**b, "input_ids": hidden}


@pytest.mark.parametrize("frozen_layers,rtn_layer", [(1, 1), (1, LAYERS), (LAYERS, LAYERS)])
def test_cached_model_gives_the_same_logits_and_losses(frozen_layers, rtn_layer):
    full, bottom, cached = cached_twin(frozen_layers, rtn_layer)
    full.eval(), cached.eval()
    b = batch(torch.Generator().manual_seed(31), 3, 7)
    c = as_cached(bottom, b)
    for use_rtn in (False, True):
        torch.testing.assert_close(cached(c["input_ids"], c["attention_mask"], use_rtn=use_rtn),
                                   full(b["input_ids"], b["attention_mask"], use_rtn=use_rtn))
        torch.testing.assert_close(cached.loss(c, use_rtn=use_rtn), full.loss(b, use_rtn=use_rtn))
    assert set(cached.theta_above_rtn()) <= set(cached.theta())
    assert not any(n.startswith("encoder.embeddings") for n in cached.theta())


@pytest.mark.parametrize("rtn_layer,truncated", [(1, False), (1, True), (LAYERS, False),
                                                 (LAYERS, True)])
def test_hypergradient_through_the_cut_matches_finite_differences(rtn_layer, truncated):
    _, bottom, model = cached_twin(1, rtn_layer)
    gen = torch.Generator().manual_seed(32)
    source, t1, t2 = (as_cached(bottom, batch(gen, n, t)) for n, t in ((3, 7), (2, 6), (2, 5)))
    _, phi_grads, _ = hypergradient(model, source, t1, t2, 0.5, truncated=truncated)
    phi = model.phi()
    for seed in range(2):
        d = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(seed), dtype=p.dtype)
             for n, p in phi.items()}
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for n, p in phi.items():
                    p.add_(sign * 1e-6 * d[n])
            values.append(meta_loss_after_virtual_step(model, source, t1, t2, 0.5, truncated))
            with torch.no_grad():
                for n, p in phi.items():
                    p.sub_(sign * 1e-6 * d[n])
        numeric = (values[0] - values[1]) / 2e-6
        analytic = sum((phi_grads[n] * d[n]).sum() for n in phi).item()
        assert abs(analytic) > 1e-6 and abs(analytic - numeric) / abs(numeric) < 1e-4


def test_a_trial_at_the_cached_fidelity_learns_and_a_resumed_one_reuses_the_cache(synth_root,
                                                                                  monkeypatch):
    cfg = config(synth_root, freeze_layers=1, epochs=12)
    trained = train.run_trial(cfg)
    assert trained["final"]["dev/f1"] > 0.5, trained["history"]
    assert list((frozen.cache_root() / "hidden").glob("*.pt"))
    frozen._MEMORY.clear()  # a new worker process: memory empty, disk cache warm

    def no_recompute(*args):
        raise AssertionError("the cached hidden states must be read, not recomputed")

    monkeypatch.setattr(frozen, "compute_states", no_recompute)
    saved = []

    def report(metrics, checkpoint):  # serialised at once, as Tune does
        saved.append(io.BytesIO())
        torch.save(checkpoint, saved[-1])

    full = train.run_trial(cfg.replace(epochs=2), report=report)
    saved[0].seek(0)
    resumed = train.run_trial(cfg.replace(epochs=2), resume_from=torch.load(saved[0], weights_only=True))
    assert resumed["history"] == full["history"]


def test_an_empty_split_is_not_cached(capsys):
    bottom, _ = split_encoder(tiny_encoder("xlmr"), 1)
    before = set((frozen.cache_root() / "hidden").glob("*.pt"))
    assert frozen._split_states(bottom, ["tiny", "w", 1], [], collator=None) == []
    assert set((frozen.cache_root() / "hidden").glob("*.pt")) == before
    assert "caching" not in capsys.readouterr().out


def test_an_rtn_inside_the_frozen_layers_is_a_config_error(synth_root):
    with pytest.raises(ConfigError, match="rtn_layer: an RTN after layer 0 would sit inside"):
        train.run_trial(config(synth_root, freeze_layers=1, rtn_layer=0))
    with pytest.raises(ConfigError, match="freeze_layers: must be in 0..2"):
        train.run_trial(config(synth_root, freeze_layers=3))
    train.build_trial(config(synth_root, freeze_layers=1, rtn_layer=0, method="joint"),
                      torch.device("cpu"))  # no RTN: any rtn_layer is ignored
