"""The bi-level step, checked numerically on tiny float64 encoders of both families."""

import copy

import pytest
import torch
from torch.func import functional_call
from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

from metaxl_core.meta import (finite_difference_hypergradient, hypergradient, metaxl_step,
                             plain_step)
from metaxl_core.model import MetaXLModel, cross_entropy

VOCAB, LABELS, LAYERS = 40, 3, 2
DESIGNS = ("official", "identity")


def tiny_encoder(family: str):
    common = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=LAYERS, num_attention_heads=2,
                  intermediate_size=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  max_position_embeddings=40)
    if family == "bert":
        return BertModel(BertConfig(**common), add_pooling_layer=False)
    return XLMRobertaModel(XLMRobertaConfig(pad_token_id=1, **common), add_pooling_layer=False)


def batch(gen: torch.Generator, n: int, length: int, task: str = "ner") -> dict:
    ids = torch.randint(5, VOCAB, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length - 3:] = 0  # padding in the first row: masks must be respected
    ids[mask == 0] = 1
    if task == "ner":
        labels = torch.randint(0, LABELS, (n, length), generator=gen)
        labels[mask == 0] = -100
        labels[:, 0] = -100
    else:
        labels = torch.randint(0, LABELS, (n,), generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_model(family="bert", rtn_layer=LAYERS, task="ner", seed=0, **options) -> MetaXLModel:
    torch.manual_seed(seed)
    model = MetaXLModel(tiny_encoder(family), LABELS, task, rtn_layer, rtn_width=4,
                        **options).double()
    with torch.no_grad():  # move Φ off its near-identity start so every entry has a gradient
        for p in model.phi().values():
            p.normal_(0.0, 0.5)
    return model


def meta_loss_after_virtual_step(model, source, t1, t2, eta, truncated=False,
                                 source_index=0) -> float:
    """L_meta(θ - η g(Φ)) evaluated from scratch, first order only: the FD reference."""
    theta = model.theta()
    names = list(theta)
    loss = model.loss(source, use_rtn=True, source_index=source_index) + model.loss(t1)
    grads = torch.autograd.grad(loss, [theta[n] for n in names], allow_unused=True)
    step_names = set(model.theta_above_rtn()) if truncated else set(names)
    new = {n: (theta[n] - eta * g if n in step_names and g is not None else theta[n]).detach()
           for n, g in zip(names, grads)}
    logits = functional_call(model, new, (t2["input_ids"], t2["attention_mask"]))
    return cross_entropy(logits, t2["labels"]).item()


CASES = [(family, k, truncated, "ner", design) for family in ("bert", "xlmr") for k in (0, 1, LAYERS)
         for truncated in (False, True) for design in DESIGNS] \
    + [("bert", k, False, "sentiment", design) for k in (0, LAYERS) for design in DESIGNS] \
    + [("bert", layers, truncated, "ner", "identity") for layers in ((0, LAYERS), (1, LAYERS))
       for truncated in (False, True)]  # several RTNs in one pass (the identity design only)


@pytest.mark.parametrize("family,rtn_layer,truncated,task,design", CASES)
def test_hypergradient_matches_finite_differences(family, rtn_layer, truncated, task, design):
    model = make_model(family, rtn_layer, task, rtn_design=design)
    gen = torch.Generator().manual_seed(1)
    source, t1, t2 = batch(gen, 3, 7, task), batch(gen, 2, 6, task), batch(gen, 2, 5, task)
    eta = 0.5  # large, so the second-order term dominates the check
    _, phi_grads, _ = hypergradient(model, source, t1, t2, eta, truncated=truncated)

    phi = model.phi()
    eps = 1e-6
    checked = 0
    for direction_seed in range(4):
        d = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(direction_seed),
                            dtype=p.dtype) for n, p in phi.items()}
        analytic = sum((phi_grads[n] * d[n]).sum() for n in phi).item()
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for n, p in phi.items():
                    p.add_(sign * eps * d[n])
            values.append(meta_loss_after_virtual_step(model, source, t1, t2, eta, truncated))
            with torch.no_grad():
                for n, p in phi.items():
                    p.sub_(sign * eps * d[n])
        numeric = (values[0] - values[1]) / (2 * eps)
        assert abs(analytic) > 1e-6, "hypergradient is zero: the check would be vacuous"
        assert abs(analytic - numeric) / abs(numeric) < 1e-4, (analytic, numeric)
        checked += 1
    assert checked == 4


def test_exact_and_truncated_differ_below_the_last_layer():
    model = make_model("bert", rtn_layer=1)
    gen = torch.Generator().manual_seed(2)
    source, t1, t2 = batch(gen, 3, 7), batch(gen, 2, 6), batch(gen, 2, 5)
    _, exact, _ = hypergradient(model, source, t1, t2, 0.5)
    _, trunc, _ = hypergradient(model, source, t1, t2, 0.5, truncated=True)
    assert any(not torch.allclose(exact[n], trunc[n]) for n in exact)


def test_theta_update_is_adamw_on_g_without_a_second_source_pass():
    model = make_model("bert", rtn_layer=1)
    gen = torch.Generator().manual_seed(3)
    source, t1, t2 = batch(gen, 3, 7), batch(gen, 2, 6), batch(gen, 2, 5)
    reference = copy.deepcopy(model)
    g, _, _ = hypergradient(reference, source, t1, t2, 1e-3)

    theta_opt = torch.optim.AdamW(model.theta().values(), lr=1e-2, weight_decay=0.01)
    phi_opt = torch.optim.Adam(model.phi().values(), lr=1e-2)
    calls = {"source": 0}
    original_loss = model.loss

    def counting_loss(b, use_rtn=False, source_index=0):
        calls["source"] += b is source
        return original_loss(b, use_rtn=use_rtn, source_index=source_index)

    model.loss = counting_loss
    metaxl_step(model, theta_opt, phi_opt, source, t1, t2, virtual_lr=1e-3, mode="exact",
                max_grad_norm=0.0)
    assert calls["source"] == 1, "the source batch must run forward exactly once per step"

    ref_theta = reference.theta()
    for n, p in ref_theta.items():
        p.grad = g[n]
    ref_opt = torch.optim.AdamW(ref_theta.values(), lr=1e-2, weight_decay=0.01)
    ref_opt.step()
    for n, p in model.theta().items():
        torch.testing.assert_close(p, ref_theta[n], rtol=1e-12, atol=1e-12)
    moved = [not torch.equal(p, reference.phi()[n]) for n, p in model.phi().items()]
    assert all(moved), "Φ must step on a metaxl step"


def test_joint_step_leaves_phi_unchanged():
    model = make_model("xlmr", rtn_layer=1)
    gen = torch.Generator().manual_seed(4)
    before = {n: p.detach().clone() for n, p in model.phi().items()}
    theta_before = {n: p.detach().clone() for n, p in model.theta().items()}
    opt = torch.optim.AdamW(model.theta().values(), lr=1e-2)
    plain_step(model, opt, [batch(gen, 3, 7), batch(gen, 3, 6)], max_grad_norm=1.0)
    for n, p in model.phi().items():
        assert torch.equal(p, before[n]) and p.grad is None
    assert any(not torch.equal(p, theta_before[n]) for n, p in model.theta().items())


@pytest.mark.parametrize("rtn_layer", [0, 1, LAYERS])
def test_rtn_is_inactive_at_evaluation(rtn_layer):
    model = make_model("bert", rtn_layer).eval()
    plain = MetaXLModel(tiny_encoder("bert"), LABELS, "ner", rtn_layer, rtn_width=None).double().eval()
    plain.load_state_dict(model.exportable_state_dict())
    assert not any(k.startswith("rtn.") for k in model.exportable_state_dict())
    b = batch(torch.Generator().manual_seed(5), 3, 7)
    with torch.no_grad():
        out = model(b["input_ids"], b["attention_mask"])
        transformed = model(b["input_ids"], b["attention_mask"], use_rtn=True)
        reference = plain(b["input_ids"], b["attention_mask"])
    assert torch.equal(out, reference)
    assert not torch.allclose(out, transformed), "the RTN must change source representations"


@pytest.mark.parametrize("rtn_layer", [0, 1, LAYERS])
def test_finite_difference_hypergradient_approximates_the_exact_one(rtn_layer):
    model = make_model("xlmr", rtn_layer)
    gen = torch.Generator().manual_seed(6)
    source, t1, t2 = batch(gen, 3, 7), batch(gen, 2, 6), batch(gen, 2, 5)
    g_exact, exact, _ = hypergradient(model, source, t1, t2, 0.5)
    g_fd, approx, _ = finite_difference_hypergradient(model, source, t1, t2, 0.5, epsilon=1e-5)
    for name in exact:
        torch.testing.assert_close(approx[name], exact[name], rtol=1e-5, atol=1e-9)
    for name in g_exact:  # the θ update uses the same g
        if g_exact[name] is not None:
            torch.testing.assert_close(g_fd[name], g_exact[name], rtol=1e-10, atol=1e-12)
    coarse = finite_difference_hypergradient(model, source, t1, t2, 0.5, epsilon=1.0)[1]
    assert any(not torch.allclose(coarse[n], exact[n], rtol=1e-5) for n in exact), \
        "a coarse difference must be visibly approximate (the test can fail)"


def test_several_rtns_each_transform_their_own_layer():
    model = make_model("bert", rtn_layer=(0, LAYERS), rtn_design="identity").eval()
    assert sorted(model.rtn) == ["0", str(LAYERS)] and model.rtn_layer == 0
    b = batch(torch.Generator().manual_seed(7), 3, 7)
    with torch.no_grad():
        plain = model(b["input_ids"], b["attention_mask"])
        both = model(b["input_ids"], b["attention_mask"], use_rtn=True)
        model.rtn[str(LAYERS)].gate.bias.fill_(-1e4)  # the top RTN becomes the identity
        model.rtn[str(LAYERS)].gate.weight.zero_()
        bottom_only = model(b["input_ids"], b["attention_mask"], use_rtn=True)
    assert not torch.allclose(both, bottom_only) and not torch.allclose(bottom_only, plain)
    assert torch.equal(plain, model(b["input_ids"], b["attention_mask"]))
