"""Batches for training: endless shuffled batches of a split, and the sampler that picks which
source each step's batch comes from when a trial has several sources.

    sampler = SourceSampler(cfg, task_data.source_sizes)
    for source_index, batch in sampler.batches(features, collator, batch_size, steps, seed): ...
"""

from __future__ import annotations

import random

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from metaxl_core.config import TrialConfig
from metaxl_core.names import DataSpec


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch's batches of similar-length examples, in random order: a random permutation
    cut into mega-batches of 50 batches and sorted by length within each (Hugging Face's
    `group_by_length` grouping), then the batches shuffled, so that long and short batches
    interleave rather than run longest first. Each example is in exactly one batch."""
    gen = torch.Generator().manual_seed(seed)
    order = get_length_grouped_indices(lengths, batch_size, generator=gen)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def endless_batches(features: list[dict], batch_size: int, seed: int):
    """Lists of exactly `batch_size` features drawn from shuffled passes over `features`."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            more = list(range(len(features)))
            rng.shuffle(more)
            order += more
        take, order = order[:batch_size], order[batch_size:]
        yield [features[i] for i in take]


class SourceSampler:
    """Which source each step's batch comes from when a trial has several sources.

    The probabilities are softmax(logits): "proportional" fixes the logits at log(size),
    "uniform" at 0; "learned" starts proportional and, after every MetaXL step on source i,
    moves them by the REINFORCE rule logits += lr (r - b)(onehot(i) - p), where the reward r
    is the step's `grad_alignment` (cosine between g and the meta-gradient, so sources whose
    steps lower the target's meta loss gain probability) and b a running mean of r (as in
    MultiDDS, Wang et al. 2020). Each step's batch comes from one source, so a per-source RTN
    sees only its own language.
    """

    def __init__(self, cfg: TrialConfig, sizes: list[int]):
        self.names = [f"{spec.dataset}_{spec.lang}" for spec in map(DataSpec.parse, cfg.sources)]
        self.sizes = list(sizes)
        self.mode, self.lr = cfg.source_sampling, cfg.sampling_lr
        prior = torch.log(torch.tensor(sizes, dtype=torch.float64))
        self.logits = torch.zeros_like(prior) if self.mode == "uniform" else prior
        self.baseline: float | None = None
        self.steps = [0] * len(sizes)

    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def batches(self, features: list[dict], collator, batch_size: int, steps: int, seed: int):
        """`steps` (source index, collated batch) pairs; each batch drawn from one source."""
        rng = random.Random(seed)
        bounds = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        streams = [endless_batches(features[lo:hi], batch_size, seed + 7919 * (i + 1))
                   for i, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
        for _ in range(steps):
            index = rng.choices(range(len(streams)), weights=self.probabilities().tolist())[0]
            self.steps[index] += 1
            yield index, collator(next(streams[index]))

    def update(self, index: int, reward: float) -> None:
        """Learned sampling: move the probabilities toward sources with well-aligned steps."""
        if self.mode != "learned":
            return
        advantage = reward - (reward if self.baseline is None else self.baseline)
        direction = -self.probabilities()
        direction[index] += 1.0
        self.logits = self.logits + self.lr * advantage * direction
        self.baseline = reward if self.baseline is None else 0.9 * self.baseline + 0.1 * reward

    def metrics(self) -> dict[str, float]:
        """Sampling probability and steps so far of each source, for the epoch's metrics."""
        return {**{f"train/p_{n}": p for n, p in zip(self.names, self.probabilities().tolist())},
                **{f"train/steps_{n}": float(k) for n, k in zip(self.names, self.steps)}}

    def state_dict(self) -> dict:
        return {"logits": self.logits.clone(), "baseline": self.baseline, "steps": list(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.logits, self.baseline, self.steps = state["logits"].clone(), state["baseline"], \
            list(state["steps"])
