"""The MetaXL bi-level step, and the plain step the baselines use. This is the only place
where either lives.

One MetaXL step with source batch S and target batches T1 (train) and T2 (meta):

1. g = d/dθ [CE(S through the RTN) + CE(T1)], keeping the graph (g depends on Φ);
2. θ' = θ - η g, a virtual SGD step (functional: no parameter is copied or mutated);
3. Φ gets d CE(T2; θ') / dΦ, the one-step unrolled hypergradient, and steps with its optimizer;
4. θ steps with its own optimizer on g itself: the source batch is not run a second time.

`hypergradient="truncated"` makes the virtual step only over the parameters computed after
the RTN (upper layers and head); the layers below keep θ. This is an approximation of the
exact hypergradient that skips the second-order pass through the lower layers.
"""

from __future__ import annotations

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from metaxl_core.errors import TrainingError
from metaxl_core.model import MetaXLModel, cross_entropy


def second_order_attention():
    """SDPA's math backend: the fused CPU/flash kernels have no double backward."""
    return sdpa_kernel([SDPBackend.MATH])


def hypergradient(model: MetaXLModel, source: dict, t1: dict, t2: dict, virtual_lr: float,
                  truncated: bool = False) -> tuple[dict, dict, dict]:
    """Compute g (θ gradient of the train loss) and the hypergradient for Φ; change nothing.

    Returns:
        (g, phi_grads, losses): g maps θ names to detached gradients (None where unused),
        phi_grads maps Φ names to hypergradients, losses holds detached scalars.
    """
    theta, phi = model.theta(), model.phi()
    names = list(theta)
    with second_order_attention():
        loss_source = model.loss(source, use_rtn=True)
        loss_t1 = model.loss(t1)
        train_loss = loss_source + loss_t1
        _check_finite(train_loss, "train loss")
        grads = torch.autograd.grad(train_loss, [theta[n] for n in names],
                                    create_graph=True, allow_unused=True)
        g = dict(zip(names, grads))
        virtual = set(model.theta_above_rtn()) if truncated else set(names)
        theta_prime = {
            n: theta[n] - virtual_lr * g[n] if n in virtual and g[n] is not None else theta[n].detach()
            for n in names
        }
        meta_logits = functional_call(model, theta_prime, (t2["input_ids"], t2["attention_mask"]))
        meta_loss = cross_entropy(meta_logits, t2["labels"])
        _check_finite(meta_loss, "meta loss")
        phi_grads = torch.autograd.grad(meta_loss, list(phi.values()), allow_unused=True)
    losses = {"loss_source": loss_source.item(), "loss_target": loss_t1.item(),
              "loss_meta": meta_loss.item()}
    detached = {n: None if grad is None else grad.detach() for n, grad in g.items()}
    phi_grads = {n: torch.zeros_like(p) if grad is None else grad
                 for (n, p), grad in zip(phi.items(), phi_grads)}
    return detached, phi_grads, losses


def metaxl_step(model: MetaXLModel, theta_optimizer, phi_optimizer, source: dict, t1: dict,
                t2: dict, *, virtual_lr: float, truncated: bool, max_grad_norm: float) -> dict:
    """One MetaXL step: update Φ with the hypergradient and θ with g. Returns the losses."""
    g, phi_grads, losses = hypergradient(model, source, t1, t2, virtual_lr, truncated)
    for name, param in model.phi().items():
        param.grad = phi_grads[name]
    phi_optimizer.step()
    phi_optimizer.zero_grad(set_to_none=True)
    for name, param in model.theta().items():
        param.grad = g[name]
    _clip_and_step(model, theta_optimizer, max_grad_norm)
    return losses


def plain_step(model: MetaXLModel, optimizer, batches: list[dict], max_grad_norm: float) -> dict:
    """One first-order step on the summed loss of `batches` (no RTN): joint and single-language
    training. Φ, when present, gets no gradient and does not change."""
    loss = sum(model.loss(batch) for batch in batches)
    _check_finite(loss, "train loss")
    loss.backward()
    _clip_and_step(model, optimizer, max_grad_norm)
    return {"loss": loss.item()}


def _clip_and_step(model: MetaXLModel, optimizer, max_grad_norm: float) -> None:
    if max_grad_norm > 0:
        params = [p for p in model.theta().values() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _check_finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"non-finite {what} ({loss.item()}): lower the learning rates "
                            "or check the data; the trial stops here")
