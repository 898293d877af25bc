"""The MetaXL bi-level step, and the plain step the baselines use. This is the only place
where either lives.

One MetaXL step with source batch S and target batches T1 (train) and T2 (meta):

1. g = d/dθ [CE(S through the RTN) + CE(T1)], keeping the graph (g depends on Φ through S;
   T1 runs the fastest attention kernels, and its part of the graph is never differentiated);
2. θ' = θ - η g as fresh leaves (no parameter is copied or mutated) and v = d CE(T2; θ') / dθ',
   a first-order pass;
3. Φ gets -η (dg/dΦ)ᵀ v = d CE(T2; θ') / dΦ, the one-step unrolled hypergradient, by one
   backward through g's graph, and steps with its optimizer;
4. θ steps with its own optimizer on g itself: the source batch is not run a second time.
   `theta_step="official"` instead runs S (through the updated RTN) and T1 again after Φ's
   step and steps θ on that gradient, as the released code does (one more forward/backward).

`hypergradient="truncated"` makes the virtual step only over the parameters computed after
the RTN (upper layers and head); the layers below keep θ. This is an approximation of the
exact hypergradient: only the layers above the RTN are differentiated twice, and g below it
comes from a first-order backward of the hidden states at the RTN site.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from metaxl_core.errors import TrainingError
from metaxl_core.model import MetaXLModel, cross_entropy


def second_order_attention():
    """SDPA's math backend: the fused CPU/flash kernels have no double backward."""
    return sdpa_kernel([SDPBackend.MATH])


def hypergradient(model: MetaXLModel, source: dict, t1: dict, t2: dict, virtual_lr: float,
                  truncated: bool = False, source_index: int = 0) -> tuple[dict, dict, dict]:
    """Compute g (θ gradient of the train loss) and the hypergradient for Φ; change nothing.

    `source_index` routes the source batch through that source's RTNs (one per source) and
    limits the hypergradient to them.

    Returns:
        (g, phi_grads, losses): g maps θ names to detached gradients (None where unused),
        phi_grads maps the routed Φ names to hypergradients, losses holds detached scalars,
        among them `grad_alignment`, the cosine between g and the meta-gradient v (see
        `_alignment`).
    """
    theta, phi = model.theta(), model.phi(source_index)
    names = list(theta)
    virtual = model.theta_above_rtn() if truncated else names  # the virtually stepped θ
    below = [n for n in names if n not in set(virtual)]
    hidden = []  # hidden states at the RTN site (after the RTN for S): where truncation cuts
    handle = model.rtn_site().register_forward_hook(
        lambda module, inputs, out: hidden.append(out[0] if isinstance(out, tuple) else out))
    try:
        loss_t1 = model.loss(t1)  # fastest kernels: g(T1) does not depend on Φ, so the
        with second_order_attention():  # Φ-gradient never runs its double backward
            loss_source = model.loss(source, use_rtn=True, source_index=source_index)
    finally:
        handle.remove()
    train_loss = loss_source + loss_t1
    # g with the graph that makes it a function of Φ, for the θ stepped virtually; the θ
    # below the cut get a first-order backward from the hidden states' gradients.
    grads = torch.autograd.grad(train_loss, [theta[n] for n in virtual] + (hidden if below else []),
                                create_graph=True, allow_unused=True)
    g_graph = dict(zip(virtual, grads))
    if below:
        d_hidden = [d.detach() for d in grads[len(virtual):]]
        g_graph.update(zip(below, torch.autograd.grad(hidden, [theta[n] for n in below], d_hidden,
                                                      retain_graph=True, allow_unused=True)))
    g = {n: None if g_graph[n] is None else g_graph[n].detach() for n in names}

    # θ' = θ - η g as fresh leaves: L_meta(θ') is first order (fastest kernels), and its
    # gradient v is pulled back through g alone: dL_meta/dΦ = -η (dg/dΦ)ᵀ v.
    stepped = [n for n in virtual if g_graph[n] is not None and g_graph[n].requires_grad]
    theta_prime = _virtual_step(theta, g, [n for n in virtual if g[n] is not None], virtual_lr)
    for n in stepped:
        theta_prime[n].requires_grad_()
    meta_logits = functional_call(model, theta_prime, (t2["input_ids"], t2["attention_mask"]))
    meta_loss = cross_entropy(meta_logits, t2["labels"])
    v = torch.autograd.grad(meta_loss, [theta_prime[n] for n in stepped], allow_unused=True)
    del theta_prime, meta_logits
    pairs = [(g_graph[n], v_n) for n, v_n in zip(stepped, v) if v_n is not None]
    phi_grads = torch.autograd.grad([g_n for g_n, _ in pairs], list(phi.values()),
                                    [v_n for _, v_n in pairs], allow_unused=True)
    losses = _read_losses(loss_source, loss_t1, meta_loss, _alignment(g, dict(zip(stepped, v))))
    phi_grads = {n: torch.zeros_like(p) if grad is None else -virtual_lr * grad
                 for (n, p), grad in zip(phi.items(), phi_grads)}
    return g, phi_grads, losses


def finite_difference_hypergradient(model: MetaXLModel, source: dict, t1: dict, t2: dict,
                                    virtual_lr: float, epsilon: float = 0.01,
                                    source_index: int = 0) -> tuple[dict, dict, dict]:
    """First-order approximation of `hypergradient` (DARTS-style): no second-order graph.

    The exact hypergradient is -η (d²L_S / dΦ dθ) v with v = dL_meta/dθ' at θ' = θ - η g; here
    the mixed second derivative times v is a central difference of two first-order Φ
    gradients of the source loss, at θ ± r v with r = epsilon / |v|. Error O(r²); costs two
    extra first-order passes over the source batch instead of a double backward, and every
    pass can use the fused attention kernels. Both passes replay the random state of the first
    source pass, so they draw its dropout masks (with independent masks the difference would be
    dominated by mask noise divided by 2r), and an input-detaching (official) RTN transforms the
    first pass's input in them, so θ ± r v moves the hidden states only where autograd sees θ
    act through the detach. Same return values as `hypergradient`.
    """
    theta, phi = model.theta(), model.phi(source_index)
    names = list(theta)
    loss_t1 = model.loss(t1)
    before_source = _rng_state(source["input_ids"].device)
    with model.recording_rtn_inputs() as rtn_inputs:
        loss_source = model.loss(source, use_rtn=True, source_index=source_index)
    train_loss = loss_source + loss_t1
    grads = torch.autograd.grad(train_loss, [theta[n] for n in names], allow_unused=True)
    g = {n: None if grad is None else grad.detach() for n, grad in zip(names, grads)}
    stepped = [n for n in names if g[n] is not None]
    theta_prime = _virtual_step(theta, g, stepped, virtual_lr)
    for n in stepped:
        theta_prime[n].requires_grad_()
    meta_logits = functional_call(model, theta_prime, (t2["input_ids"], t2["attention_mask"]))
    meta_loss = cross_entropy(meta_logits, t2["labels"])
    v = torch.autograd.grad(meta_loss, [theta_prime[n] for n in stepped], allow_unused=True)
    v = {n: torch.zeros_like(g[n]) if v_n is None else v_n for n, v_n in zip(stepped, v)}
    losses = _read_losses(loss_source, loss_t1, meta_loss, _alignment(g, v))
    radius = epsilon / max(torch.nn.utils.get_total_norm(list(v.values())).item(), 1e-12)
    after_meta = _rng_state(source["input_ids"].device)
    phi_at = []
    for sign in (1.0, -1.0):
        _set_rng_state(before_source)  # the first source pass's dropout masks
        shifted = _virtual_step(theta, v, list(v), -sign * radius)
        with model.holding_rtn_inputs(rtn_inputs):
            loss = functional_call(model, shifted, (source["input_ids"], source["attention_mask"]),
                                   {"use_rtn": True, "source_index": source_index,
                                    "labels": source["labels"]})
        phi_at.append(torch.autograd.grad(loss, list(phi.values()), allow_unused=True))
    _set_rng_state(after_meta)  # later draws continue as if the replays had not happened
    phi_grads = {n: torch.zeros_like(p) if plus is None else
                 -virtual_lr * (plus - minus) / (2 * radius)
                 for (n, p), plus, minus in zip(phi.items(), *phi_at)}
    return g, phi_grads, losses


def _rng_state(device: torch.device) -> tuple:
    """The random state dropout draws from on `device` (CPU's, and the CUDA device's)."""
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None, device)


def _set_rng_state(state: tuple) -> None:
    cpu, cuda, device = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _virtual_step(theta: dict, direction: dict, moved: list, lr: float) -> dict:
    """θ - lr·direction for the names in `moved` (new detached tensors), θ itself (detached)
    elsewhere. One multi-tensor kernel instead of two per parameter: on a GPU a step this small
    is bound by kernel launches."""
    with torch.no_grad():
        stepped = torch._foreach_add([theta[n] for n in moved], [direction[n] for n in moved],
                                     alpha=-lr)
    return {n: p.detach() for n, p in theta.items()} | dict(zip(moved, stepped))


def _alignment(g: dict, v: dict) -> torch.Tensor:
    """cos(g, v) over the θ where both exist: how much the step g lowers the meta loss, to first
    order (L_meta(θ - ηg) ≈ L_meta(θ) - η g·v), on a scale-free [-1, 1]. A 0-dim tensor: read
    with the losses, in the step's one device sync."""
    pairs = [(g[n], v_n) for n, v_n in v.items() if v_n is not None and g.get(n) is not None]
    if not pairs:
        return torch.zeros(())
    dot = torch.stack([torch.vdot(g_n.flatten(), v_n.flatten()) for g_n, v_n in pairs]).sum()
    norms = [torch.nn.utils.get_total_norm(side) for side in zip(*pairs)]
    return dot / (norms[0] * norms[1]).clamp(min=1e-30)


def _read_losses(loss_source, loss_t1, meta_loss, alignment) -> dict:
    """The step's scalars as floats, read in one device sync (one per scalar stalls a GPU
    step); raises TrainingError, before any parameter moves, on a non-finite loss."""
    values = torch.stack([t.detach().float().to(loss_source.device)
                          for t in (loss_source, loss_t1, meta_loss, alignment)]).tolist()
    losses = dict(zip(("loss_source", "loss_target", "loss_meta", "grad_alignment"), values))
    _check_finite(losses["loss_source"] + losses["loss_target"], "train loss")
    _check_finite(losses["loss_meta"], "meta loss")
    return losses


def metaxl_step(model: MetaXLModel, theta_optimizer, phi_optimizer, source: dict, t1: dict,
                t2: dict, *, virtual_lr: float, mode: str, max_grad_norm: float,
                source_index: int = 0, theta_step: str = "g") -> dict:
    """One MetaXL step: update Φ with the hypergradient and θ with g. Returns the losses.

    `mode`: "exact", "truncated" (see `hypergradient`) or "finite_difference" (see
    `finite_difference_hypergradient`). Only the RTNs the source batch went through step;
    the others keep no gradient, so their optimizer state does not move them.
    `theta_step`: "g" (θ steps on g, from before Φ's step) or "official" (θ steps on the
    gradient of CE(S through the updated RTN) + CE(T1), a second pass; the losses returned
    stay those of the first pass)."""
    if mode == "finite_difference":
        g, phi_grads, losses = finite_difference_hypergradient(model, source, t1, t2, virtual_lr,
                                                               source_index=source_index)
    else:
        g, phi_grads, losses = hypergradient(model, source, t1, t2, virtual_lr,
                                             truncated=mode == "truncated",
                                             source_index=source_index)
    for name, param in model.phi(source_index).items():
        param.grad = phi_grads[name]
    phi_optimizer.step()
    phi_optimizer.zero_grad(set_to_none=True)
    if theta_step == "official":
        g = _train_gradient(model, source, t1, source_index)
    for name, param in model.theta().items():
        param.grad = g[name]
    _clip_and_step(model, theta_optimizer, max_grad_norm)
    return losses


def _train_gradient(model: MetaXLModel, source: dict, t1: dict, source_index: int) -> dict:
    """d/dθ [CE(S through the RTN as it is now) + CE(T1)], detached; Φ gets no gradient."""
    theta = model.theta()
    loss = model.loss(source, use_rtn=True, source_index=source_index) + model.loss(t1)
    grads = torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
    return {n: None if grad is None else grad.detach() for n, grad in zip(theta, grads)}


def plain_step(model: MetaXLModel, optimizer, batches: list[dict], max_grad_norm: float, *,
               rtn_batch: dict | None = None, source_index: int = 0) -> dict:
    """One first-order step on the summed loss of `batches` (no RTN): joint and single-language
    training. `rtn_batch` adds a batch sent through the RTNs of source `source_index` (the
    frozen-RTN control). Φ is not stepped and does not change."""
    loss = sum(model.loss(batch) for batch in batches)
    if rtn_batch is not None:
        loss = loss + model.loss(rtn_batch, use_rtn=True, source_index=source_index)
    loss.backward()
    value = loss.item()  # after the backward: a sync before it would stall a GPU step
    if not math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)  # the step stops: drop its gradients
        _check_finite(value, "train loss")  # raises
    _clip_and_step(model, optimizer, max_grad_norm)
    return {"loss": value}


def _clip_and_step(model: MetaXLModel, optimizer, max_grad_norm: float) -> None:
    if max_grad_norm > 0:
        params = [p for p in model.theta().values() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _check_finite(loss: float, what: str) -> None:
    if not math.isfinite(loss):
        raise TrainingError(f"non-finite {what} ({loss}): lower the learning rates "
                            "or check the data; the trial stops here")
