"""The fast path of the hypergradient on float32 SDPA models, where T1 and the meta batch run
the fused attention kernels (no double backward), against the textbook formulation."""

import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import BertConfig, BertModel

from metaxl_core.meta import hypergradient
from metaxl_core.model import MetaXLModel, cross_entropy
from tests.test_meta import LABELS, VOCAB, batch


def unrolled_hypergradient(model, source, t1, t2, eta, truncated):
    """The textbook formulation: one second-order graph for S + T1, autograd through θ'."""
    theta, phi = model.theta(), model.phi()
    names = list(theta)
    with sdpa_kernel([SDPBackend.MATH]):
        loss = model.loss(source, use_rtn=True) + model.loss(t1)
        grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=True,
                                    allow_unused=True)
        stepped = set(model.theta_above_rtn()) if truncated else set(names)
        new = {n: theta[n] - eta * g if n in stepped and g is not None else theta[n].detach()
               for n, g in zip(names, grads)}
        logits = functional_call(model, new, (t2["input_ids"], t2["attention_mask"]))
        meta = cross_entropy(logits, t2["labels"])
        return torch.autograd.grad(meta, list(phi.values()))


@pytest.mark.parametrize("rtn_layer", [0, 1, 2])
@pytest.mark.parametrize("truncated", [False, True])
def test_float32_sdpa_model_matches_the_unrolled_formulation(rtn_layer, truncated):
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=48,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                   max_position_embeddings=40, attn_implementation="sdpa"),
                        add_pooling_layer=False)
    model = MetaXLModel(encoder, LABELS, "ner", rtn_layer, rtn_width=8)
    with torch.no_grad():
        for p in model.phi().values():
            p.normal_(0.0, 0.5)
    gen = torch.Generator().manual_seed(8)
    source, t1, t2 = batch(gen, 4, 9), batch(gen, 3, 8), batch(gen, 3, 7)
    eta = 0.5
    g, phi_grads, _ = hypergradient(model, source, t1, t2, eta, truncated=truncated)
    expected = unrolled_hypergradient(model, source, t1, t2, eta, truncated)
    for (n, got), want in zip(phi_grads.items(), expected):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6, msg=n)
    assert all(not t.requires_grad for t in g.values() if t is not None)
