"""The MetaXL model: any Hugging Face encoder, a task head, and an RTN after layer k.

The RTN is applied by a forward hook on the module that produces the hidden states after
layer k (k = 0: the embedding module; k >= 1: encoder layer k-1), so one forward pass runs
every layer exactly once, the encoder builds its own attention masks, and the hook works
unchanged under `torch.func.functional_call`. The hook transforms only when the caller asks
for it (`use_rtn=True`, source batches in training); evaluation never does.

    model = MetaXLModel(encoder, num_labels=7, task="ner", rtn_layer=12, rtn_width=192)
    model = MetaXLModel(encoder, num_labels=7, task="ner", rtn_layer=[0, 12], rtn_width=192)
    logits = model(input_ids, attention_mask, use_rtn=True)   # (batch, seq, labels)
    model = MetaXLModel(encoder, 7, "ner", 12, 192, rtn_sets=2)   # one RTN per source
    loss = model(input_ids, attention_mask, use_rtn=True, source_index=1, labels=labels)
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from metaxl_core.config import SEQUENTIAL_OFFICIAL

RTN_PREFIX = "rtn"  # the RTN modules ("rtn.") and their mixing weights ("rtn_mix.")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled positions; -100 marks positions without a label."""
    if logits.dtype in (torch.bfloat16, torch.float16):  # under autocast: the loss in float32
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100)


class OfficialRTN(nn.Module):
    """The released MetaXL RTN (`Raptors`, struct "perceptron", add_weights, tied):
    h + σ(o_d) · o_{1..d} with o = W₂ ReLU(W₁ h̄ + b₁) + b₂, W₂: b -> d+1, h̄ = h detached.

    The last output unit is a per-token gate; both weight matrices are Xavier-normal, the
    biases zero, so the RTN starts as a sizeable perturbation (the gate near 0.5), not the
    identity. Its input is detached, as released: θ below the RTN gets gradient through the
    identity path only.
    """

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.ReLU(),
                                 nn.Linear(width, hidden_size + 1))
        for layer in (self.net[0], self.net[2]):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    detaches_input = True

    def forward(self, hidden: torch.Tensor, held_input: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d) -> (B, T, d). `held_input` replaces h inside the transformation (see
        `MetaXLModel.holding_rtn_inputs`); the identity path always takes `hidden`."""
        out = self.net((hidden if held_input is None else held_input).detach())
        return hidden + torch.sigmoid(out[..., -1:]) * out[..., :-1]


class IdentityRTN(nn.Module):
    """This project's earlier RTN: h + σ(g·h + c) · (Wᵀ tanh(W h + b) + e).

    Tied weights (the decoder is the encoder's transpose), tanh, a separate gate whose bias
    starts at -3 (σ ≈ 0.05) and small weights (std 0.02): it starts at, and at small meta_lr
    stays near, the identity. Its input is not detached.
    """

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, width)
        self.up_bias = nn.Parameter(torch.zeros(hidden_size))
        self.gate = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, -3.0)

    detaches_input = False

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        update = F.linear(torch.tanh(self.down(hidden)), self.down.weight.t(), self.up_bias)
        return hidden + torch.sigmoid(self.gate(hidden)) * update


RTN_CLASSES = {"official": OfficialRTN, "identity": IdentityRTN}  # by config.RTN_CLASSES name


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer layers (the ModuleList of num_hidden_layers blocks)."""
    return encoder.get_submodule(layers_path(encoder))


def layers_path(encoder: nn.Module) -> str:
    """The dotted name of the encoder's ModuleList of layers (e.g. "encoder.layer")."""
    n_layers = encoder.config.num_hidden_layers
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return name
    raise ValueError(f"cannot find the {n_layers} transformer layers of {type(encoder).__name__}")


class CachedInput(nn.Module):
    """Stands in for the embeddings of an encoder whose lower layers are cached: the cached
    hidden states arrive as `inputs_embeds` and pass through unchanged."""

    def forward(self, input_ids=None, inputs_embeds=None, **unused):
        return inputs_embeds


def split_encoder(encoder: nn.Module, frozen_layers: int) -> tuple[nn.Module, nn.Module]:
    """(bottom, top) copies of `encoder`: bottom computes the hidden states after layer
    `frozen_layers` (embeddings and layers 1..k), top runs layers k+1..L on them (its embeddings
    are a `CachedInput`: pass the cached states as `inputs_embeds`)."""
    path = layers_path(encoder)
    parent, _, attr = path.rpartition(".")
    n_layers = encoder.config.num_hidden_layers
    if not 0 <= frozen_layers <= n_layers:
        raise ValueError(f"frozen_layers must be in 0..{n_layers}, got {frozen_layers}")
    halves = []
    for keep in (slice(0, frozen_layers), slice(frozen_layers, n_layers)):
        copy_ = copy.deepcopy(encoder)
        setattr(copy_.get_submodule(parent), attr, nn.ModuleList(list(encoder_layers(copy_))[keep]))
        copy_.config.num_hidden_layers = len(range(n_layers)[keep])
        halves.append(copy_)
    halves[1].embeddings = CachedInput()
    return halves[0], halves[1]


class MetaXLModel(nn.Module):
    """Encoder + RTNs after the given layers + a token or sequence classification head.

    Args:
        encoder: a base encoder loaded with AutoModel (BERT and XLM-R families tested).
        num_labels: size of the label set.
        task: "ner" (a label per token) or "sentiment" (a label per sequence, mean-pooled).
        rtn_layer: k in 0..L (0 transforms the embedding output, L the last layer's output),
            or several layers: one RTN each.
        rtn_width: bottleneck width of each RTN; None builds none (baselines, export).
        rtn_sets: 1 (every source shares the RTNs) or the number of sources (one set of RTNs
            per source; `source_index` routes a batch through its own).
        rtn_mixing: with several layers, "sequential" applies every layer's RTN in one pass,
            lowest first; "softmax" runs one pass per layer with only that layer's RTN and
            mixes their losses with softmax weights (`rtn_mix`, part of Φ).
        rtn_design: "official" (`OfficialRTN`, as released) or "identity" (`IdentityRTN`).
        frozen_layers: k > 0 when `encoder` is the top of `split_encoder(full, k)`: the inputs
            are then the cached hidden states after layer k, (B, T, d), instead of token ids.
            Layers keep the full encoder's numbers, so RTN layers must be in k..L.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, task: str,
                 rtn_layer: int | Sequence[int], rtn_width: int | None, *, rtn_sets: int = 1,
                 rtn_mixing: str = "sequential", rtn_design: str = "official",
                 frozen_layers: int = 0):
        super().__init__()
        n_layers = frozen_layers + encoder.config.num_hidden_layers
        layers = sorted({rtn_layer} if isinstance(rtn_layer, int) else set(rtn_layer))
        if not layers or (rtn_width and not all(frozen_layers <= k <= n_layers for k in layers)):
            raise ValueError(f"RTN layers must be in {frozen_layers}..{n_layers}, got {rtn_layer}")
        if rtn_mixing not in ("sequential", "softmax") or rtn_sets < 1 or rtn_design not in RTN_CLASSES:
            raise ValueError(f"rtn_mixing must be sequential or softmax, rtn_sets >= 1 and rtn_design "
                             f"one of {list(RTN_CLASSES)}, got {rtn_mixing!r}, {rtn_sets}, {rtn_design!r}")
        if rtn_design == "official" and rtn_mixing == "sequential" and len(layers) > 1:
            raise ValueError(SEQUENTIAL_OFFICIAL)
        self.encoder = encoder
        self.frozen_layers = frozen_layers
        self.task = task
        self.rtn_layers = tuple(layers)
        self.rtn_layer = layers[0]  # the lowest: nothing below it sees an RTN
        self.rtn_sets = rtn_sets
        self.mixes_losses = rtn_mixing == "softmax" and len(layers) > 1
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(getattr(encoder.config, "hidden_dropout_prob", 0.1))
        self.classifier = nn.Linear(hidden, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        self.rtn = self.rtn_mix = None
        if rtn_width:
            self.rtn = nn.ModuleDict({self._rtn_key(k, s): RTN_CLASSES[rtn_design](hidden, rtn_width)
                                      for s in range(rtn_sets) for k in layers})
            for k in layers:
                self.rtn_site(k).register_forward_hook(functools.partial(self._apply_rtn, k))
            if self.mixes_losses:
                self.rtn_mix = nn.ParameterDict({str(s): nn.Parameter(torch.zeros(len(layers)))
                                                 for s in range(rtn_sets)})
        self._active_layers: tuple[int, ...] = ()  # set for the duration of one forward
        self._active_set = 0
        self._rtn_inputs: dict[int, torch.Tensor] | None = None  # see holding_rtn_inputs

    def _rtn_key(self, layer: int, rtn_set: int) -> str:
        """ModuleDict key of one RTN: "12" when shared, "12_s1" for source 1's own."""
        return str(layer) if self.rtn_sets == 1 else f"{layer}_s{rtn_set}"

    def _rtn_set(self, source_index: int) -> int:
        """The RTN set a batch of source `source_index` goes through."""
        if self.rtn_sets == 1:
            return 0
        if not 0 <= source_index < self.rtn_sets:
            raise ValueError(f"source_index {source_index} out of range: {self.rtn_sets} RTN sets")
        return source_index

    def rtn_site(self, layer: int | None = None) -> nn.Module:
        """The module whose output the RTN of `layer` (default: the lowest) transforms."""
        layer = (self.rtn_layer if layer is None else layer) - self.frozen_layers
        if layer == 0:
            return self.encoder.embeddings
        return encoder_layers(self.encoder)[layer - 1]

    def _apply_rtn(self, layer: int, module, inputs, output):
        if layer not in self._active_layers:
            return output
        rtn = self.rtn[self._rtn_key(layer, self._active_set)]
        hidden = output[0] if isinstance(output, tuple) else output  # older layers: (hidden, ...)
        held = self._rtn_inputs.get(layer) if self._rtn_inputs is not None else None
        transformed = rtn(hidden) if held is None else rtn(hidden, held)
        return (transformed,) + output[1:] if isinstance(output, tuple) else transformed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                use_rtn: bool = False, source_index: int = 0,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits, (B, T, labels) for NER and (B, labels) for sentiment; with `labels`, the loss.

        `use_rtn` sends the batch through the RTNs of source `source_index`; with softmax
        mixing that needs `labels` (the mix is over losses)."""
        use_rtn = use_rtn and self.rtn is not None
        rtn_set = self._rtn_set(source_index)
        if use_rtn and self.mixes_losses:
            if labels is None:
                raise ValueError("softmax mixing of RTN layers mixes losses: pass labels")
            weights = torch.softmax(self.rtn_mix[str(rtn_set)], dim=0)
            return sum(w * cross_entropy(self._logits(input_ids, attention_mask, (k,), rtn_set), labels)
                       for w, k in zip(weights, self.rtn_layers))
        logits = self._logits(input_ids, attention_mask, self.rtn_layers if use_rtn else (), rtn_set)
        return logits if labels is None else cross_entropy(logits, labels)

    def _logits(self, input_ids, attention_mask, rtn_layers: tuple[int, ...], rtn_set: int):
        self._active_layers, self._active_set = rtn_layers, rtn_set
        try:
            inputs = {"inputs_embeds" if self.frozen_layers else "input_ids": input_ids}
            hidden = self.encoder(**inputs, attention_mask=attention_mask).last_hidden_state
        finally:
            self._active_layers = ()
        if self.task == "sentiment":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            hidden = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.classifier(self.dropout(hidden))

    def loss(self, batch: dict, use_rtn: bool = False, source_index: int = 0) -> torch.Tensor:
        """Mean cross-entropy over labelled positions (-100 is ignored)."""
        return self(batch["input_ids"], batch["attention_mask"], use_rtn, source_index,
                    labels=batch["labels"])

    def theta(self) -> dict[str, nn.Parameter]:
        """Encoder and head parameters (the inner, θ, parameters)."""
        return {n: p for n, p in self.named_parameters() if not n.startswith(RTN_PREFIX)}

    def phi(self, source_index: int | None = None) -> dict[str, nn.Parameter]:
        """RTN parameters (the outer, Φ, meta-parameters): all, or those a batch of source
        `source_index` is routed through."""
        phi = {n: p for n, p in self.named_parameters() if n.startswith(RTN_PREFIX)}
        if source_index is None or self.rtn_sets == 1:
            return phi
        rtn_set = self._rtn_set(source_index)
        own = {f"rtn.{self._rtn_key(k, rtn_set)}." for k in self.rtn_layers} | {f"rtn_mix.{rtn_set}"}
        return {n: p for n, p in phi.items() if n.startswith(tuple(own))}

    def theta_above_rtn(self) -> list[str]:
        """Names of θ parameters computed after the (lowest) RTN: layers k+1..L and the head."""
        layers = list(encoder_layers(self.encoder))[self.rtn_layer - self.frozen_layers:]
        above = {id(p) for layer in layers for p in layer.parameters()}
        above |= {id(p) for p in self.classifier.parameters()}
        return [n for n, p in self.theta().items() if id(p) in above]

    @contextlib.contextmanager
    def recording_rtn_inputs(self):
        """Yield a dict that the block's forward passes fill with each input-detaching RTN's
        input (layer -> detached tensor), for `holding_rtn_inputs`."""
        inputs: dict[int, torch.Tensor] = {}
        hooks = [self.rtn[self._rtn_key(k, s)].register_forward_hook(
            lambda module, args, out, k=k: inputs.__setitem__(k, args[0].detach()))
            for k in self.rtn_layers for s in range(self.rtn_sets)
            if self.rtn[self._rtn_key(k, s)].detaches_input]
        try:
            yield inputs
        finally:
            for hook in hooks:
                hook.remove()

    @contextlib.contextmanager
    def holding_rtn_inputs(self, inputs: dict[int, torch.Tensor]):
        """Within the block each input-detaching RTN transforms the recorded `inputs` instead of
        the current hidden states: θ moves the hidden states only through the identity path, as
        autograd sees it through the detach (the first-order hypergradient needs this)."""
        self._rtn_inputs = inputs
        try:
            yield
        finally:
            self._rtn_inputs = None

    @torch.no_grad()
    def rtn_movement(self, batch: dict, source_index: int = 0) -> dict[int, float]:
        """Per RTN layer, how far the RTN moves this batch's hidden states: the mean over real
        tokens of ||RTN(h) - h|| / ||h||, in eval mode (no dropout). 0 means the identity."""
        sums: dict[int, float] = {}
        mask = batch["attention_mask"].bool()
        hooks = []
        for layer in self.rtn_layers:
            def record(module, inputs, output, layer=layer):
                change = (output - inputs[0]).norm(dim=-1) / inputs[0].norm(dim=-1).clamp(min=1e-12)
                sums[layer] = change[mask].mean().item()
            hooks.append(self.rtn[self._rtn_key(layer, self._rtn_set(source_index))]
                         .register_forward_hook(record))
        was_training = self.training
        self.eval()
        try:
            for layer in self.rtn_layers:  # one pass per layer: each sees the RTN input alone
                self._logits(batch["input_ids"], batch["attention_mask"], (layer,),
                             self._rtn_set(source_index))
        finally:
            for hook in hooks:
                hook.remove()
            self.train(was_training)
        return sums

    def exportable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained model without the RTN: the RTN is a training-time meta-parameter."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(RTN_PREFIX)}
