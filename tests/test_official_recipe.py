"""The settings of the released MetaXL recipe (issue 41): L2 weight decay inside Adam on θ and
on the RTN, MetaXL-only clipping, and θ's real step recomputed through the updated RTN."""

import copy

import pytest
import torch

from metaxl_core.config import TrialConfig
from metaxl_core.errors import ConfigError
from metaxl_core.meta import metaxl_step
from metaxl_core.train import clip_norm, make_optimizers
from tests.test_meta import batch, make_model

LR, DECAY, EPS = 1e-3, 5e-4, 1e-8


def first_adam_l2_step(p: torch.Tensor, decay: float, lr: float) -> torch.Tensor:
    """Adam's first step on a parameter whose loss gradient is 0, by hand: the L2 term d·p is the
    whole gradient, m̂ = d·p, v̂ = (d·p)², so p moves by lr·d·p / (|d·p| + eps)."""
    grad = decay * p
    return p - lr * grad / (grad.abs() + EPS)


@pytest.mark.parametrize("field,value", [("weight_decay_mode", "decoupled"),
                                         ("theta_step", "phi"), ("rtn_weight_decay", -1.0),
                                         ("metaxl_max_grad_norm", -0.5)])
def test_fields_are_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        TrialConfig(**{field: value})


def test_defaults_are_todays_behaviour():
    cfg = TrialConfig()
    assert (cfg.weight_decay_mode, cfg.rtn_weight_decay, cfg.metaxl_max_grad_norm,
            cfg.theta_step) == ("adamw", 0.0, None, "g")
    theta_opt, phi_opt = make_optimizers(cfg, make_model())
    assert type(theta_opt) is torch.optim.AdamW
    assert theta_opt.param_groups[0]["weight_decay"] == cfg.weight_decay
    assert type(phi_opt) is torch.optim.Adam and phi_opt.param_groups[0]["weight_decay"] == 0.0
    assert clip_norm(cfg) == cfg.max_grad_norm


@pytest.mark.parametrize("mode", ["l2", "adamw"])
def test_theta_weight_decay_mode(mode):
    """A θ entry with zero loss gradient: L2 inside Adam moves it by Adam's normalised step of
    d·p; AdamW shrinks it by lr·d·p (decoupled), a far smaller move."""
    model = make_model()
    cfg = TrialConfig(lr=LR, weight_decay=DECAY, weight_decay_mode=mode)
    theta_opt, _ = make_optimizers(cfg, model)
    params = list(model.theta().values())
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    theta_opt.step()
    for p, old in zip(params, before):
        expected = first_adam_l2_step(old, DECAY, LR) if mode == "l2" else old * (1 - LR * DECAY)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-9, atol=1e-12)


def test_rtn_weight_decay_moves_phi_without_hypergradient():
    model = make_model()
    phi = list(model.phi().values())
    for decay in (0.0, DECAY):
        cfg = TrialConfig(meta_lr=LR, rtn_weight_decay=decay)
        _, phi_opt = make_optimizers(cfg, model)
        before = [p.detach().clone() for p in phi]
        for p in phi:
            p.grad = torch.zeros_like(p)
        phi_opt.step()
        for p, old in zip(phi, before):
            expected = first_adam_l2_step(old, decay, LR) if decay else old
            torch.testing.assert_close(p.detach(), expected, rtol=1e-9, atol=1e-12)
        if decay:
            assert any(not torch.equal(p.detach(), old) for p, old in zip(phi, before))


class Recording(torch.optim.SGD):
    """SGD at lr 0 that keeps the θ gradient it was asked to step on (after clipping)."""

    def __init__(self, params):
        self.params = list(params)
        super().__init__(self.params, lr=0.0)
        self.seen = None

    def step(self, closure=None):
        self.seen = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        return super().step(closure)


def data():
    gen = torch.Generator().manual_seed(1)
    return batch(gen, 3, 7), batch(gen, 2, 6), batch(gen, 2, 5)


def test_metaxl_max_grad_norm_clips_metaxl_only():
    cfg = TrialConfig(max_grad_norm=1.0, metaxl_max_grad_norm=10.0)
    assert clip_norm(cfg) == 10.0
    for method in ("joint", "joint_t1", "frozen_rtn", "target_only", "source_only"):
        assert clip_norm(cfg.replace(method=method,
                                     source=None if method == "target_only" else cfg.source)) == 1.0
    assert clip_norm(cfg.replace(metaxl_max_grad_norm=None)) == 1.0
    # the clip reaches metaxl's θ step: the norm it steps on is the limit when g is larger
    model = make_model()
    source, t1, t2 = data()
    for limit in (0.01, 0.02):
        theta_opt = Recording(model.theta().values())
        phi_opt = torch.optim.SGD(model.phi().values(), lr=0.0)
        metaxl_step(model, theta_opt, phi_opt, source, t1, t2, virtual_lr=0.1, mode="exact",
                    max_grad_norm=clip_norm(cfg.replace(metaxl_max_grad_norm=limit)))
        norm = torch.nn.utils.get_total_norm([g for g in theta_opt.seen if g is not None])
        assert norm.item() == pytest.approx(limit, rel=1e-6)


@pytest.mark.parametrize("mode", ["exact", "truncated", "finite_difference"])
def test_official_theta_step_uses_the_updated_rtn(mode):
    """θ's step under theta_step official is d/dθ [CE(S; θ, Φ_new) + CE(T1; θ)] with Φ_new the
    RTN after its step, not g (computed with the old Φ)."""
    model = make_model()
    reference = copy.deepcopy(model)
    source, t1, t2 = data()
    recorded = {}
    for step in ("g", "official"):
        run = copy.deepcopy(model)
        theta_opt = Recording(run.theta().values())
        phi_opt = torch.optim.SGD(run.phi().values(), lr=5.0)  # a large Φ move
        metaxl_step(run, theta_opt, phi_opt, source, t1, t2, virtual_lr=0.5, mode=mode,
                    max_grad_norm=0.0, theta_step=step)
        recorded[step] = (theta_opt.seen, {n: p.detach().clone() for n, p in run.phi().items()})

    def train_gradient(phi: dict) -> list:
        with torch.no_grad():
            for name, p in reference.phi().items():
                p.copy_(phi[name])
        loss = reference.loss(source, use_rtn=True) + reference.loss(t1)
        return torch.autograd.grad(loss, list(reference.theta().values()), allow_unused=True)

    seen, phi_new = recorded["official"]
    assert any(not torch.equal(phi_new[n], p) for n, p in model.phi().items())
    expected_new = train_gradient(phi_new)
    expected_old = train_gradient({n: p.detach() for n, p in model.phi().items()})
    for got, want in zip(seen, expected_new):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for got, want in zip(recorded["g"][0], expected_old):  # "g": the old Φ's gradient
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    below = [n for n, _ in model.theta().items()]
    differs = [n for n, a, b in zip(below, seen, recorded["g"][0])
               if a is not None and not torch.allclose(a, b, rtol=1e-6, atol=1e-9)]
    assert differs  # the check can tell the two steps apart


def test_rtn_movement_is_exported_restored_and_reported(tmp_path, new_mlflow_store):
    """Every RTN run's last-epoch `rtn/movement` and its initial value reach the grid export
    (per run and mean ± std per configuration), survive --restore, and make a report section."""
    from mlflow.tracking import MlflowClient

    from sweeps import grid
    from sweeps import report as report_lib
    from sweeps.mlflow_store import log_results

    preset = {"name": "t", "seeds": [1, 2], "methods": ["joint", "frozen_rtn", "metaxl"],
              # data_seed fixed: the export's aggregate groups runs by their whole trial, and a
              # data_seed that follows the seed would make each seed a configuration of its own
              "trial": {"encoder": "tiny-bert", "epochs": 2, "data_seed": 42},
              "tasks": {"ner": {"targets": {"ner:masakhaner2:lug": ["ner:conll2003:en"]}}}}
    runs = grid.plan_runs(preset)
    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("t")
    moved = {("frozen_rtn", 1): 0.5, ("frozen_rtn", 2): 0.5, ("metaxl", 1): 0.4, ("metaxl", 2): 0.6}
    for run in runs:
        last = moved.get((run["method"], run["seed"]))
        history = [{"epoch": e, "dev/f1": 0.1 * e, "train/loss": 1.0 / e,
                    **({"rtn/movement": last - 0.1 * (2 - e)} if last else {})} for e in (1, 2)]
        log_results(client, experiment_id, {
            "config": run["config"].to_dict(), "history": history, "best_epoch": 2,
            "rtn_movement_init": {"rtn/movement": 0.5} if last else {},
            "final": {"dev/f1": 0.2, "test/f1": 0.3}, "wall_time_s": 1.0},
            {**grid.run_tags(run, "t"), "role": "bench"})
    exported = grid.export_results(client, experiment_id, preset, runs, uri)
    for rec in exported["runs"]:
        last = moved.get((rec["method"], rec["seed"]))
        if last is None:
            assert "rtn_movement" not in rec
        else:
            assert rec["rtn_movement"] == {"init": 0.5, "last": pytest.approx(last)}
    rows = {r["method"]: r for r in exported["aggregate"]}
    assert "rtn/movement" not in rows["joint"]
    assert rows["metaxl"]["rtn/movement"]["mean"] == pytest.approx(0.5)
    assert rows["metaxl"]["rtn/movement"]["std"] == pytest.approx(0.1414213562, rel=1e-6)
    assert rows["frozen_rtn"]["rtn/movement_init"] == {"mean": 0.5, "std": 0.0}

    saved = tmp_path / "results.json"
    saved.write_text(__import__("json").dumps(exported), encoding="utf-8")
    restored = {r["method"] + str(r["seed"]): res for r, res, _ in grid.restorable(saved, runs)}
    assert restored["metaxl1"]["rtn_movement_init"] == {"rtn/movement": 0.5}
    assert restored["metaxl1"]["history"][-1]["rtn/movement"] == pytest.approx(0.4)
    assert "rtn_movement_init" not in restored["joint1"]

    report = report_lib.build_report(uri, "t", tmp_path / "report")
    [row] = report["tasks"]["ner"]["rtn_movement"]
    assert sorted(row["cells"]) == ["frozen_rtn", "metaxl"]
    assert row["cells"]["metaxl"]["mean"] == pytest.approx(0.5)
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "RTN movement at the last epoch" in text and "0.500 ± 0.141" in text


def test_run_trial_wires_the_official_settings(synth_root, monkeypatch):
    """run_trial hands MetaXL's step the recipe (Adam with L2 on θ and Φ, clip 10, official θ
    step) and keeps the other methods at max_grad_norm."""
    from metaxl_core import meta, train
    from tests.test_train import config

    seen = []

    def recording_metaxl(model, theta_opt, phi_opt, *args, **kwargs):
        seen.append(("metaxl", type(theta_opt), theta_opt.param_groups[0]["weight_decay"],
                     phi_opt.param_groups[0]["weight_decay"], kwargs["max_grad_norm"],
                     kwargs["theta_step"]))
        return meta.metaxl_step(model, theta_opt, phi_opt, *args, **kwargs)

    def recording_plain(model, optimizer, batches, max_grad_norm, **kwargs):
        seen.append(("plain", type(optimizer), max_grad_norm))
        return meta.plain_step(model, optimizer, batches, max_grad_norm, **kwargs)

    monkeypatch.setattr(train, "metaxl_step", recording_metaxl)
    monkeypatch.setattr(train, "plain_step", recording_plain)
    recipe = dict(epochs=1, weight_decay=DECAY, weight_decay_mode="l2", rtn_weight_decay=DECAY,
                  metaxl_max_grad_norm=10.0, theta_step="official")
    train.run_trial(config(synth_root, method="metaxl", **recipe))
    assert seen and set(seen) == {("metaxl", torch.optim.Adam, DECAY, DECAY, 10.0, "official")}
    seen.clear()
    train.run_trial(config(synth_root, method="joint", **recipe))
    assert seen and set(seen) == {("plain", torch.optim.Adam, 1.0)}
