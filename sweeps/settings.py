"""Sweep settings: one typed object read from a YAML file and/or flags (flags win), and the
plan it expands to. With no file and no flags it is the embedded default: a complete small
sweep on the bundled real sample and a tiny encoder.

A sweep file looks like:

    task: ner
    targets: [ner:masakhaner2:yor, ner:masakhaner2:ibo]
    sources: [ner:conll2003:en, ner:masakhaner2:hau, "ner:conll2003:en,ner:masakhaner2:hau"]
    methods: [metaxl, joint]
    trials_per_search: 20
    space: {rtn_width: [64, 128, 192, 384, 768], rtn_layer: [0, 12],
            lr: [1.0e-5, 1.0e-4], meta_lr: [1.0e-7, 1.0e-3]}
    trial: {encoder: xlm-roberta-base, epochs: 20, source_train_size: 5000}

`sources` may instead rank its candidates per target before any trial (sweeps/rank_sources.py)
and keep the best `top_k` (default 3), searched from the best down:

    sources: {rank: auto, top_k: 3, candidates: [ner:conll2003:en, ner:masakhaner2:hau, ...],
              matrix: results/transfer-matrix/transfer_matrix.json}    # matrix: optional, this is the default
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from metaxl_core.config import (METHODS, RTN_DESIGNS, RTN_METHODS, RTN_MIXING, SOURCE_SAMPLING,
                                 TrialConfig, coerce_field, load_yaml_mapping, split_sources)
from metaxl_core.errors import ConfigError, DataError
from metaxl_core.names import TASKS, DataSpec

# Searched dimensions and the methods that have them (the frozen-RTN control has every RTN
# dimension but meta_lr; learned source sampling follows the meta-gradient, so metaxl only).
DIMENSIONS = {"rtn_width": RTN_METHODS, "rtn_layer": RTN_METHODS, "rtn_layers": RTN_METHODS,
              "rtn_design": RTN_METHODS, "lr": METHODS, "meta_lr": ("metaxl",),
              "rtn_mixing": RTN_METHODS, "rtn_per_source": RTN_METHODS,
              "source_sampling": ("metaxl",)}
# Dimensions searched as a categorical choice among the listed values, and the values allowed.
CHOICES = {"rtn_mixing": RTN_MIXING, "rtn_per_source": (False, True),
           "source_sampling": SOURCE_SAMPLING, "rtn_design": RTN_DESIGNS}

# How a space names its dimensions (sweeps/presets/paper-ner.yaml has the paper's ranges):
#   rtn_width: [64, 128, 192, 384, 768]      a categorical choice
#   rtn_layer: [0, null]                     integer bounds; null = the encoder's last layer
#   rtn_layers: ["12", "0,12", "6,12"]       instead of rtn_layer: insertion sets
#   lr: [1.0e-5, 1.0e-4], meta_lr: [...]     log-uniform bounds
#   rtn_design, rtn_mixing, rtn_per_source, source_sampling: categorical, among CHOICES

# A sweep's output folder (--output-dir) holds, besides MLflow's store:
SUMMARY = "summary.json"  # every trial's config, dev F1 per epoch and cost (sweeps/pairs.py)
OPTUNA_JOURNAL = "optuna.journal"  # every search's Optuna study (sweeps/search.py)
TUNE_DIR = "tune"  # Ray Tune's state, one folder per search
SWEEP_ID = "sweep_id.txt"  # the sweep attempt's id, tagged on its MLflow runs
RAY_PROCESSES = "ray-processes.json"  # the local Ray's processes (pid, start time) while it runs
LOCK = "sweep.lock"  # locked by the running sweep (its pid inside); the OS frees it if it dies

# The embedded default: small enough to finish in minutes on 2 CPU cores.
EMBEDDED_TRIAL = {
    "encoder": "tiny-bert",
    "epochs": 4,
    "batch_size": 10,
    "source_train_size": 150,
    "target_train_size": 100,
    "target_dev_size": 50,
    "max_seq_length": 64,
    "warmup_ratio": 0.0,
}
EMBEDDED_SPACE = {"rtn_width": [16, 32, 64], "rtn_layer": [0, None], "lr": [1e-4, 3e-3],
                  "meta_lr": [1e-5, 1e-2]}
EMBEDDED_ANCHOR = {"rtn_width": 32, "lr": 1e-3, "meta_lr": 1e-3}  # the tiny encoder's defaults


PATH_FIELDS = ("data_root", "split_index_file")  # trial fields that name a file or folder


def _absolute_paths(values: dict) -> dict:
    """`values` with relative data paths (and a local encoder folder) made absolute against the
    current folder: Ray Tune runs each trial in its own working folder, where they would not
    resolve."""
    def absolute(path):
        return str(Path(path).expanduser().resolve()) if isinstance(path, str) and path else path

    values = dict(values)
    if "data_root" in values:
        values["data_root"] = absolute(values["data_root"])
    if isinstance(values.get("trial"), dict):
        trial = dict(values["trial"])
        for name in PATH_FIELDS:
            if name in trial:
                trial[name] = absolute(trial[name])
        encoder = trial.get("encoder")
        if isinstance(encoder, str) and (encoder.startswith(("./", "../", "~"))
                                         or Path(encoder).exists()):
            trial["encoder"] = absolute(encoder)
        values["trial"] = trial
    return values


def _ranked_sources(where: str, spec: dict) -> tuple[list[str], dict]:
    """The candidates and {"top_k", "matrix"} of `sources: {rank: auto, top_k, candidates,
    matrix}`; ConfigError naming the key at fault."""
    unknown = sorted(set(spec) - {"rank", "top_k", "candidates", "matrix"})
    if unknown:
        raise ConfigError(f"{where}: sources: unknown key(s) {unknown}; a ranked source list has "
                          "rank: auto, top_k, candidates and optionally matrix")
    if spec.get("rank") != "auto":
        raise ConfigError(f"{where}: sources.rank: must be 'auto', got {spec.get('rank')!r}")
    if "candidates" not in spec:
        raise ConfigError(f"{where}: sources.candidates: the candidate sources to rank are missing")
    candidates = coerce_field(where, "sources.candidates", spec["candidates"], list[str])
    top_k = coerce_field(where, "sources.top_k", spec.get("top_k", 3), int)
    matrix = coerce_field(where, "sources.matrix", spec.get("matrix"), str | None)
    return candidates, {"top_k": top_k,
                        "matrix": matrix and str(Path(matrix).expanduser().resolve())}


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs besides where it runs (address, MLflow URI, output dir)."""

    name: str = "metaxl-sweep"
    task: str = "ner"
    targets: list[str] = field(
        default_factory=lambda: ["ner:masakhaner2:yor", "ner:masakhaner2:ibo"])
    sources: list[str] = field(
        default_factory=lambda: ["ner:conll2003:en", "ner:masakhaner2:hau"])
    methods: list[str] = field(default_factory=lambda: ["metaxl", "joint"])
    grid_pairs: bool = False  # True: one search per (source, target) pair instead of searching the source
    trials_per_search: int = 4  # trials for each (target, method[, source]) search
    max_concurrent: int = 2  # trials running at once per search
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractional values share a GPU
    seed: int = 0  # the searcher's seed (Optuna TPE)
    # ASHA, in optimizer updates (trials report after every dev evaluation): updates every
    # trial runs before it can be stopped (null: until its first evaluation, i.e. eval_every or
    # one epoch); each later rung is reduction_factor times further and keeps the top
    # 1/reduction_factor of the trials that reached it
    grace_period: int | None = None
    reduction_factor: int = 2
    max_failures: int = 1  # retries per trial after an error (Ray Tune FailureConfig)
    reuse_actors: bool = True  # run trials in warm worker processes (cached encoder and data)
    checkpoint_interval_s: float = 60.0  # a trial checkpoints after an evaluation once this long
    #                                      has passed since its start or last checkpoint (0: every
    #                                      evaluation); each checkpoint costs a Tune snapshot
    # The configuration a user would run without sweeping: searched fields (and `source`) ->
    # value; a field left out takes TrialConfig's default (rtn_layer: the last layer; moved to
    # the nearest value of the space when outside it), the source the first candidate (with
    # `rank: auto`, the ranker's top one). Every search runs it first (MLflow tag anchor=true)
    # and the pick is compared with it.
    anchor: dict = field(default_factory=lambda: dict(EMBEDDED_ANCHOR))  # a file's own space: {}
    # >1: the confirmation stage re-runs the search's top `confirm_top_k` finished
    # configurations by dev F1, and the anchor, with seeds_per_config - 1 more seeds each (the
    # data sample follows the seed), and the pick is the best mean dev F1 over seeds
    seeds_per_config: int = 3
    confirm_top_k: int = 3
    data_root: str | None = None
    # from `sources: {rank: auto, ...}` (not a key of its own): {"top_k": K, "matrix": path|None}
    source_rank: dict | None = None
    space: dict = field(default_factory=lambda: dict(EMBEDDED_SPACE))
    trial: dict = field(default_factory=lambda: dict(EMBEDDED_TRIAL))

    @property
    def data_seed_follows_seed(self) -> bool:
        """Each seed draws its own data sample, unless the sweep's trial fixes data_seed."""
        return "data_seed" not in self.trial

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid setting."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ConfigError(f"name: must be letters, digits, '_', '-' or '.' (it names the "
                              f"MLflow experiment and appears in its search filters), got {self.name!r}")
        if self.task not in TASKS:
            raise ConfigError(f"task: must be one of {TASKS}, got {self.task!r}")
        for name in ("targets", "sources", "methods"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: must not be empty")
        for method in self.methods:
            if method not in METHODS:
                raise ConfigError(f"methods: unknown method {method!r}; known: {METHODS}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods: listed twice in {self.methods}")
        for name in self.datasets():
            try:
                spec = DataSpec.parse(name)
            except DataError:
                spec = None
            if spec is None or spec.task != self.task:
                raise ConfigError(f"targets/sources: {name!r} must look like "
                                  f"'{self.task}:dataset:language' (letters, digits, '_', '-', '.'; "
                                  "a source set: comma-separated)")
        if self.source_rank is not None:
            top_k = self.source_rank["top_k"]
            if top_k < 1:
                raise ConfigError(f"sources.top_k: must be >= 1, got {top_k}")
            for group in self.sources:
                if len(split_sources(group)) > 1:
                    raise ConfigError(f"sources.candidates: rank: auto ranks single sources, "
                                      f"not the source set {group!r}")
        for target in self.targets:
            if any(m != "target_only" for m in self.methods) and not self.sources_for(target):
                raise ConfigError(f"sources: the only source for target {target!r} is the target "
                                  "itself; add another source language")
        if self.grace_period is not None and self.grace_period < 1:
            raise ConfigError(f"grace_period: must be >= 1 (updates) or null, got {self.grace_period}")
        for name in ("trials_per_search", "max_concurrent", "reduction_factor",
                     "seeds_per_config", "confirm_top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.reduction_factor < 2:
            raise ConfigError("reduction_factor: must be >= 2")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0 or self.max_failures < 0:
            raise ConfigError("cpus_per_trial must be > 0, gpus_per_trial and max_failures >= 0")
        if self.checkpoint_interval_s < 0:
            raise ConfigError(f"checkpoint_interval_s: must be >= 0, got {self.checkpoint_interval_s}")
        unknown = sorted(set(self.space) - set(DIMENSIONS))
        if unknown:
            raise ConfigError(f"space: unknown dimension(s) {unknown}; known: {sorted(DIMENSIONS)}")
        for name, values in self.space.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"space.{name}: must be a non-empty list, got {values!r}")
        for name in ("lr", "meta_lr"):
            bounds = self.space.get(name)
            if bounds is not None and not (len(bounds) == 2 and all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                    and 0 < bounds[0] < bounds[1] < math.inf):
                raise ConfigError(f"space.{name}: must be [low, high] with 0 < low < high, "
                                  f"got {bounds!r}")
        layers = self.space.get("rtn_layer")
        if layers is not None and not (len(layers) == 2 and isinstance(layers[0], int)
                                       and layers[0] >= 0 and (layers[1] is None or (
                                           isinstance(layers[1], int) and layers[1] >= layers[0]))):
            raise ConfigError(f"space.rtn_layer: must be [low, high] integers (high may be null "
                              f"for the last layer), got {layers!r}")
        if "rtn_layer" in self.space and "rtn_layers" in self.space:
            raise ConfigError("space: search rtn_layer (one RTN) or rtn_layers (insertion sets "
                              "such as '0,12'), not both")
        for layers in self.space.get("rtn_layers", []):
            if not (isinstance(layers, str) and all(re.fullmatch(r"\s*[0-9]+\s*", p)
                                                    for p in layers.split(","))):
                raise ConfigError(f"space.rtn_layers: each choice must be a string of layer "
                                  f"numbers like '0,12', got {layers!r}")
        for name, allowed in CHOICES.items():
            for value in self.space.get(name, []):
                if value not in allowed or type(value) is not type(allowed[0]):
                    raise ConfigError(f"space.{name}: each choice must be one of {list(allowed)}, "
                                      f"got {value!r}")
        widths = self.space.get("rtn_width")
        if widths is not None and not all(isinstance(w, int) and w > 0 for w in widths):
            raise ConfigError(f"space.rtn_width: must be positive integers, got {widths!r}")
        searched = sorted(set(self.trial) & set(self.space))
        if searched or "source" in self.trial or "target" in self.trial or "method" in self.trial:
            raise ConfigError(f"trial: fixes fields the sweep sets itself "
                              f"({searched or 'source/target/method'})")
        self.base_trial(self.targets[0], self.methods[0])  # the fixed trial fields must be valid
        self.check_anchor()

    def datasets(self) -> list[str]:
        """Every dataset the sweep reads, once: the targets, then each source of every set."""
        return list(dict.fromkeys(self.targets + [s for group in self.sources
                                                  for s in split_sources(group)]))

    def sources_for(self, target: str) -> list[str]:
        """Candidate sources (or source sets) of one target: never one that includes it."""
        return [s for s in self.sources if target not in split_sources(s)]

    def base_trial(self, target: str, method: str, source: str | None = None) -> TrialConfig:
        """The fixed part of a trial of this sweep (searched fields at their defaults)."""
        fields = {**self.trial, "task": self.task, "target": target, "method": method,
                  "source": None if method == "target_only" else source or self.sources_for(target)[0]}
        if self.data_seed_follows_seed:
            fields["data_seed"] = fields.get("seed", TrialConfig.__dataclass_fields__["seed"].default)
        if self.data_root is not None:
            fields["data_root"] = self.data_root
        try:
            return TrialConfig.from_dict(fields, source="trial")
        except ConfigError as err:
            raise ConfigError(f"sweep {err}") from None

    def check_anchor(self) -> None:
        """ConfigError unless every anchor field is a searched dimension (or `source`) and a
        value given lies in the space."""
        unknown = sorted(set(self.anchor) - set(self.space) - {"source"})
        if unknown:
            raise ConfigError(f"anchor: {unknown} not searched; anchor names searched dimensions "
                              f"({sorted(self.space)}) and source")
        if "source" in self.anchor and self.anchor["source"] not in self.sources:
            raise ConfigError(f"anchor.source: {self.anchor['source']!r} is not among sources "
                              f"{self.sources}")
        for name in self.anchor.keys() - {"source"}:
            if self.anchor_value(name) != self.anchor[name]:
                raise ConfigError(f"anchor.{name}: {self.anchor[name]!r} lies outside space.{name} "
                                  f"{self.space[name]}; the anchor is a configuration the search "
                                  "could reach")

    def anchor_value(self, name: str):
        """The anchor's value of a searched dimension: given, else TrialConfig's default, moved
        to the nearest value the space allows when it lies outside (rtn_layer None: the last)."""
        values = self.space[name]
        value = self.anchor.get(name, TrialConfig.__dataclass_fields__[name].default)
        if name in ("lr", "meta_lr"):
            return min(max(value, values[0]), values[1])
        if name == "rtn_layer":
            return value if value is None else max(value, values[0]) if values[1] is None \
                else min(max(value, values[0]), values[1])
        if value in values:
            return value
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        return min(values, key=lambda v: abs(v - value)) if numbers and isinstance(
            value, (int, float)) else values[0]

    def anchor_config(self, search: dict, n_layers: int) -> dict:
        """The anchor of one search: its searched fields (and source, when searched)."""
        anchor = {}
        if len(search["sources"]) > 1:
            source = self.anchor.get("source", search["sources"][0])
            anchor["source"] = source if source in search["sources"] else search["sources"][0]
        for name in search["dimensions"]:
            anchor[name] = self.anchor_value(name)
        if "rtn_layer" in anchor and anchor["rtn_layer"] is None:
            high = self.space["rtn_layer"][1]
            anchor["rtn_layer"] = min(n_layers if high is None else high, n_layers)
        return anchor

    def searches(self, ranked: dict[str, list[str]] | None = None) -> list[dict]:
        """One search per (target, method), or per (target, method, source) with grid_pairs.
        `ranked`: target -> its candidates best first (sweeps/rank_sources.py): the first
        `top_k` are searched, and `ranked: True` marks searches that try them in that order."""
        plan = []
        for target in self.targets:
            sources = self.sources_for(target)
            if ranked is not None:
                sources = ranked[target][:self.source_rank["top_k"]]
            for method in self.methods:
                groups = [[None]] if method == "target_only" else \
                    [[s] for s in sources] if self.grid_pairs else [sources]
                for group in groups:
                    plan.append({"target": target, "method": method, "sources": group,
                                 "ranked": ranked is not None and len(group) > 1,
                                 "dimensions": [d for d in self.space if method in DIMENSIONS[d]]})
        return plan

    @classmethod
    def load(cls, path: str | None = None, overrides: dict | None = None) -> SweepConfig:
        """Read a sweep YAML (safe loader) and apply `overrides` (flags) on top."""
        values = load_yaml_mapping(path) if path else {}
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        where = path or "command line"
        known = {f.name for f in dataclasses.fields(cls)} - {"source_rank"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        if isinstance(values.get("sources"), dict):
            values["sources"], values["source_rank"] = _ranked_sources(where, values["sources"])
        if "space" in values:  # the embedded anchor belongs to the embedded space
            values.setdefault("anchor", {})
        hints = typing.get_type_hints(cls)
        values = {key: coerce_field(where, key, value, hints[key]) for key, value in values.items()}
        trial_root = (values.get("trial") or {}).get("data_root")
        if not values.get("data_root") and not trial_root and os.environ.get("METAXL_DATA_ROOT"):
            values["data_root"] = os.environ["METAXL_DATA_ROOT"]  # made absolute for Ray's workers
        values = _absolute_paths(values)
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

