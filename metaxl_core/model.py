"""The MetaXL model: any Hugging Face encoder, a task head, and an RTN after layer k.

The RTN is applied by a forward hook on the module that produces the hidden states after
layer k (k = 0: the embedding module; k >= 1: encoder layer k-1), so one forward pass runs
every layer exactly once, the encoder builds its own attention masks, and the hook works
unchanged under `torch.func.functional_call`. The hook transforms only when the caller asks
for it (`use_rtn=True`, source batches in training); evaluation never does.

    model = MetaXLModel(encoder, num_labels=7, task="ner", rtn_layer=12, rtn_width=192)
    model = MetaXLModel(encoder, num_labels=7, task="ner", rtn_layer=[0, 12], rtn_width=192)
    logits = model(input_ids, attention_mask, use_rtn=True)   # (batch, seq, labels)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

RTN_PREFIX = "rtn."


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled positions; -100 marks positions without a label."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100)


class RTN(nn.Module):
    """Representation transformation network: h + gate(h) * (W^T tanh(W h + b) + c).

    A bottleneck MLP d -> b -> d with tied weights (the decoder is the encoder's transpose)
    and a per-token sigmoid gate computed from h: the paper's "perceptron, tied, add weights"
    setting. The gate starts near 0, so the RTN starts near the identity.
    """

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, width)
        self.up_bias = nn.Parameter(torch.zeros(hidden_size))
        self.gate = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, -3.0)  # sigmoid(-3) ~ 0.05: near identity

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        update = F.linear(torch.tanh(self.down(hidden)), self.down.weight.t(), self.up_bias)
        return hidden + torch.sigmoid(self.gate(hidden)) * update


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer layers (the ModuleList of num_hidden_layers blocks)."""
    n_layers = encoder.config.num_hidden_layers
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the {n_layers} transformer layers of {type(encoder).__name__}")


class MetaXLModel(nn.Module):
    """Encoder + RTNs after the given layers + a token or sequence classification head.

    Args:
        encoder: a base encoder loaded with AutoModel (BERT and XLM-R families tested).
        num_labels: size of the label set.
        task: "ner" (a label per token) or "sentiment" (a label per sequence, mean-pooled).
        rtn_layer: k in 0..L (0 transforms the embedding output, L the last layer's output),
            or several layers: one RTN each, applied in the same forward pass, lowest first.
        rtn_width: bottleneck width of each RTN; None builds none (baselines, export).
    """

    def __init__(self, encoder: nn.Module, num_labels: int, task: str,
                 rtn_layer: int | Sequence[int], rtn_width: int | None):
        super().__init__()
        n_layers = encoder.config.num_hidden_layers
        layers = sorted({rtn_layer} if isinstance(rtn_layer, int) else set(rtn_layer))
        if not layers or not all(0 <= k <= n_layers for k in layers):
            raise ValueError(f"RTN layers must be in 0..{n_layers}, got {rtn_layer}")
        self.encoder = encoder
        self.task = task
        self.rtn_layers = tuple(layers)
        self.rtn_layer = layers[0]  # the lowest: nothing below it sees an RTN
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(getattr(encoder.config, "hidden_dropout_prob", 0.1))
        self.classifier = nn.Linear(hidden, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        self.rtn = nn.ModuleDict({str(k): RTN(hidden, rtn_width) for k in layers}) \
            if rtn_width else None
        self._rtn_active = False
        if self.rtn is not None:
            for k in layers:
                self.rtn_site(k).register_forward_hook(functools.partial(self._apply_rtn, str(k)))

    def rtn_site(self, layer: int | None = None) -> nn.Module:
        """The module whose output the RTN of `layer` (default: the lowest) transforms."""
        layer = self.rtn_layer if layer is None else layer
        if layer == 0:
            return self.encoder.embeddings
        return encoder_layers(self.encoder)[layer - 1]

    def _apply_rtn(self, key: str, module, inputs, output):
        if not self._rtn_active:
            return output
        if isinstance(output, tuple):  # older transformers layers return (hidden, ...)
            return (self.rtn[key](output[0]),) + output[1:]
        return self.rtn[key](output)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                use_rtn: bool = False) -> torch.Tensor:
        """Logits: (B, T, labels) for NER, (B, labels) for sentiment."""
        self._rtn_active = use_rtn and self.rtn is not None
        try:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        finally:
            self._rtn_active = False
        if self.task == "sentiment":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            hidden = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.classifier(self.dropout(hidden))

    def loss(self, batch: dict, use_rtn: bool = False) -> torch.Tensor:
        """Mean cross-entropy over labelled positions (-100 is ignored)."""
        logits = self(batch["input_ids"], batch["attention_mask"], use_rtn=use_rtn)
        return cross_entropy(logits, batch["labels"])

    def theta(self) -> dict[str, nn.Parameter]:
        """Encoder and head parameters (the inner, θ, parameters)."""
        return {n: p for n, p in self.named_parameters() if not n.startswith(RTN_PREFIX)}

    def phi(self) -> dict[str, nn.Parameter]:
        """RTN parameters (the outer, Φ, meta-parameters)."""
        return {n: p for n, p in self.named_parameters() if n.startswith(RTN_PREFIX)}

    def theta_above_rtn(self) -> list[str]:
        """Names of θ parameters computed after the (lowest) RTN: layers k+1..L and the head."""
        layers = encoder_layers(self.encoder)
        above = {id(p) for layer in list(layers)[self.rtn_layer:] for p in layer.parameters()}
        above |= {id(p) for p in self.classifier.parameters()}
        return [n for n, p in self.theta().items() if id(p) in above]

    def exportable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained model without the RTN: the RTN is a training-time meta-parameter."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(RTN_PREFIX)}
