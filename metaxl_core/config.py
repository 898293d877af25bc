"""The trial configuration: one typed, validated object shared by training, sweeps and export.

    cfg = TrialConfig.from_yaml("trial.yaml", overrides={"lr": 5e-5})
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from metaxl_core.errors import ConfigError, DataError
from metaxl_core.names import TASKS, DataSpec, language_of

# frozen_rtn and joint_t1 are controls for metaxl: the RTN frozen at its initialisation (θ
# trains on source-through-RTN + T1, no hypergradient), and joint training on the source + T1
# only (the target examples per step that metaxl's θ sees).
METHODS = ("metaxl", "joint", "target_only", "source_only", "frozen_rtn", "joint_t1")
RTN_METHODS = ("metaxl", "frozen_rtn")  # the methods that build an RTN
SPLIT_TARGET_METHODS = ("metaxl", "frozen_rtn", "joint_t1")  # θ sees T1, not the whole target batch
HYPERGRADIENTS = ("exact", "truncated", "finite_difference")
SOURCE_SAMPLING = ("proportional", "uniform", "learned")
RTN_MIXING = ("sequential", "softmax")
RTN_DESIGNS = ("official", "identity")
PRECISIONS = ("fp32", "bf16", "auto")
WEIGHT_DECAY_MODES = ("adamw", "l2")
THETA_STEPS = ("g", "official")
# The official RTN detaches its input, so a second RTN in the same pass would cut the lower RTN's
# path to the loss out of the hypergradient: it would no longer be the derivative of the meta loss.
SEQUENTIAL_OFFICIAL = ("the official RTN design combines several RTN layers only with rtn_mixing "
                       "softmax (one pass per layer, as released); use rtn_mixing: softmax or "
                       "rtn_design: identity")


def split_sources(source: str | None) -> list[str]:
    """The source dataset names of a `source` field: "a" or a comma-separated set "a,b"."""
    return [part.strip() for part in source.split(",")] if source else []


def source_label(source: str | None) -> str:
    """Short label of a source field: its languages joined by "+" ("en+kin"), or "none"."""
    return "+".join(language_of(name) for name in split_sources(source)) or "none"


@dataclass(frozen=True)
class TrialConfig:
    """Every setting of one trial. Defaults follow the paper's NER setup where one exists."""

    # --- data: "task:dataset:language" names, see metaxl_core.names and metaxl_core.readers ---
    task: str = "ner"
    # None only for target_only; several sources: comma-separated, "ner:conll2003:en,ner:masakhaner2:kin"
    source: str | None = "ner:conll2003:en"
    target: str = "ner:masakhaner2:yor"
    data_root: str | None = None  # None: $METAXL_DATA_ROOT, else the bundled sample
    source_train_size: int = 5000  # per source; paper: 5000 NER, 1000 sentiment
    target_train_size: int = 100  # paper: 100
    target_dev_size: int | None = None  # None: the whole dev split
    data_seed: int = 42
    label_schema: str = "shared"  # NER: evaluate on the entity types both languages share
    sentiment_labels: str = "binary"  # "binary" (drop neutral) or "3way"
    split_index_file: str | None = None  # JSON {split: [indices]} reproducing a published split
    # subword tokens per sentence: 160 keeps >= 98.3% of the words of every MasakhaNER language
    # (e5 / XLM-R tokenizer; at 128 Yoruba loses 3.4%); cut words are scored as predicted O
    max_seq_length: int = 160

    # --- encoder, see metaxl_core.encoders ---
    encoder: str = "tiny-bert"
    trim_vocab: bool = False  # keep only the embedding rows the trial's data uses
    # k > 0: the embeddings and layers 1..k are frozen, their output is computed once per example
    # and cached (metaxl_core.frozen); every step runs layers k+1..L, the head and the RTN only
    freeze_layers: int = 0

    # --- method ---
    method: str = "metaxl"
    # "exact" (second order); "truncated": virtual step only above the RTN (at the last layer
    # that is the head alone); "finite_difference": first-order DARTS-style estimate (both
    # approximations, cheaper; see metaxl_core.meta)
    hypergradient: str = "exact"
    # "official": the released RTN (ReLU bottleneck d -> b -> d+1 whose last unit gates, Xavier
    # init, detached input); "identity": tied tanh bottleneck with a separate gate starting at
    # sigmoid(-3), which starts at and stays near the identity (see metaxl_core.model)
    rtn_design: str = "official"
    rtn_layer: int | None = None  # 0 = embedding output, L = last layer; None = L
    rtn_layers: str | None = None  # several RTNs, e.g. "0,6,12": one per layer, one pass; replaces rtn_layer
    rtn_width: int = 192  # bottleneck width b of the RTN (d -> b -> d)
    meta_fraction: float = 0.5  # share of each target batch used for the meta loss (T2)
    # step size of the virtual update; None = the lr the scheduler applies at that step
    virtual_lr: float | None = None
    # several RTN layers: "sequential" (one pass, each layer's RTN applied in turn) or "softmax"
    # (one source pass per layer, each with only that layer's RTN; the source loss is the mix of
    # their losses with softmax weights learned as part of Φ, as the original code did)
    rtn_mixing: str = "sequential"

    # --- several sources (see metaxl_core.sampling and metaxl_core.train) ---
    rtn_per_source: bool = False  # one RTN (set) per source, each source batch through its own
    # which source each step's batch comes from: "proportional" to the sources' sizes, "uniform",
    # or "learned" (metaxl only: sources whose steps align with the meta-gradient get more steps)
    source_sampling: str = "proportional"
    sampling_lr: float = 0.1  # step size of the learned sampling distribution

    # each step's main batch (the source; target only's target) drawn from similar-length
    # sentences (`sampling.length_grouped_batches`): less padding, the same examples per epoch;
    # one source only (with several, each step samples its source)
    group_by_length: bool = False

    # --- evaluation: dev at every epoch end and every eval_every updates (0: epoch ends only);
    # the model of the best dev evaluation is kept and scores the test split once, at the end ---
    eval_every: int = 0
    test_every_eval: bool = False  # also score test at each epoch end (costly; for curves)

    # --- optimisation ---
    epochs: int = 10
    batch_size: int = 10
    lr: float = 3e-5  # inner (encoder + head) learning rate, AdamW
    meta_lr: float = 1e-6  # outer (RTN) learning rate, Adam, with the same warm-up and decay as lr
    weight_decay: float = 0.01
    # how θ's optimizer applies weight_decay: "adamw" (decoupled, torch.optim.AdamW) or "l2"
    # (torch.optim.Adam(weight_decay=...): the decay is added to the gradient before Adam's
    # moments, as the released MetaXL code does)
    weight_decay_mode: str = "adamw"
    # L2 weight decay of Φ (the RTN), inside its Adam as in the released code (always "l2" mode);
    # 0 = none. metaxl only: the other methods do not step Φ
    rtn_weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0  # 0 disables clipping
    # clipping of metaxl's θ step only (the released code: 10); None = max_grad_norm. The other
    # methods always clip at max_grad_norm
    metaxl_max_grad_norm: float | None = None
    # metaxl's real θ step: "g" steps on the gradient computed before Φ's update (one source
    # pass); "official" runs the source (through the updated RTN) and T1 again after Φ steps and
    # steps θ on that gradient, as the released code does (one more forward/backward per step)
    theta_step: str = "g"
    seed: int = 11
    device: str = "auto"  # "auto": CUDA when available, else CPU; "cuda[:N]" must be there
    # "bf16": steps and evaluations run under torch.autocast(bfloat16) (weights, optimizer state
    # and cached states stay float32); "auto": bf16 where the hardware has it (a CUDA GPU with
    # bf16, a CPU with AVX512-BF16 or AMX), else fp32
    precision: str = "fp32"

    # --- output ---
    output_dir: str | None = None

    def __post_init__(self):
        self.validate()

    def planned_updates(self) -> int:
        """The trial's optimizer updates: epochs x batches of its step data per epoch (the
        source sample of every source; target only's target sample)."""
        examples = self.target_train_size if self.method == "target_only" else \
            self.source_train_size * len(self.sources)
        return self.epochs * math.ceil(examples / self.batch_size)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        _check(self.task in TASKS, "task", f"must be one of {TASKS}, got {self.task!r}")
        _check(self.method in METHODS, "method", f"must be one of {METHODS}, got {self.method!r}")
        _check(
            self.hypergradient in HYPERGRADIENTS,
            "hypergradient",
            f"must be one of {HYPERGRADIENTS}, got {self.hypergradient!r}",
        )
        if self.method != "target_only":
            _check(bool(self.source), "source", f"is required for method {self.method!r}")
        for name, value in [("target", self.target)] + [("source", s) for s in self.sources]:
            try:
                spec = DataSpec.parse(value)
            except DataError as err:
                several = " (several sources: comma-separated)" if name == "source" else ""
                raise ConfigError(f"{name}: {err}{several}") from None
            _check(spec.task == self.task, name,
                   f"names task {spec.task!r} but the trial's task is {self.task!r}")
        if self.target in self.sources:
            raise ConfigError(f"source: includes the target {self.target!r}; pick another language")
        _check(len(set(self.sources)) == len(self.sources), "source",
               f"lists a source twice: {self.source!r}")
        _check(self.source_sampling in SOURCE_SAMPLING, "source_sampling",
               f"must be one of {SOURCE_SAMPLING}, got {self.source_sampling!r}")
        if self.source_sampling == "learned" and len(self.sources) > 1:
            _check(self.method == "metaxl", "source_sampling",
                   f"'learned' follows the meta-gradient, so it needs method metaxl, not {self.method!r}")
        _check(math.isfinite(self.sampling_lr) and self.sampling_lr >= 0, "sampling_lr",
               f"must be >= 0, got {self.sampling_lr}")
        _check(self.rtn_design in RTN_DESIGNS, "rtn_design",
               f"must be one of {RTN_DESIGNS}, got {self.rtn_design!r}")
        _check(self.rtn_mixing in RTN_MIXING, "rtn_mixing",
               f"must be one of {RTN_MIXING}, got {self.rtn_mixing!r}")
        for name in ("source_train_size", "target_train_size", "max_seq_length", "epochs",
                     "batch_size", "rtn_width"):
            _check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        _check(self.max_seq_length >= 8, "max_seq_length", "must be >= 8")
        _check(self.eval_every >= 0, "eval_every", f"must be >= 0, got {self.eval_every}")
        _check(self.freeze_layers >= 0, "freeze_layers", f"must be >= 0, got {self.freeze_layers}")
        if self.target_dev_size is not None:
            _check(self.target_dev_size > 0, "target_dev_size", "must be > 0 or null")
        if self.rtn_layer is not None:
            _check(self.rtn_layer >= 0, "rtn_layer", f"must be >= 0, got {self.rtn_layer}")
        if self.rtn_layers is not None:
            _check(self.rtn_layer is None, "rtn_layers", "replaces rtn_layer: set only one of them")
            parts = self.rtn_layers.split(",")
            _check(all(re.fullmatch(r"\s*[0-9]+\s*", p) for p in parts), "rtn_layers",
                   f"must be comma-separated layer numbers like '0,6,12', got {self.rtn_layers!r}")
            _check(len(set(map(int, parts))) == len(parts), "rtn_layers",
                   f"lists a layer twice: {self.rtn_layers!r}")
            _check(not (self.rtn_design == "official" and self.rtn_mixing == "sequential"
                        and len(parts) > 1), "rtn_layers", SEQUENTIAL_OFFICIAL)
        for name in ("lr", "meta_lr", "weight_decay", "max_grad_norm", "rtn_weight_decay"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value >= 0, name, f"must be >= 0, got {value}")
        if self.metaxl_max_grad_norm is not None:
            _check(math.isfinite(self.metaxl_max_grad_norm) and self.metaxl_max_grad_norm >= 0,
                   "metaxl_max_grad_norm", f"must be >= 0 or null, got {self.metaxl_max_grad_norm}")
        _check(self.weight_decay_mode in WEIGHT_DECAY_MODES, "weight_decay_mode",
               f"must be one of {WEIGHT_DECAY_MODES}, got {self.weight_decay_mode!r}")
        _check(self.theta_step in THETA_STEPS, "theta_step",
               f"must be one of {THETA_STEPS}, got {self.theta_step!r}")
        _check(self.lr > 0, "lr", "must be > 0")
        if self.virtual_lr is not None:
            _check(math.isfinite(self.virtual_lr) and self.virtual_lr > 0, "virtual_lr",
                   f"must be > 0 or null, got {self.virtual_lr}")
        _check(0 < self.meta_fraction < 1, "meta_fraction", f"must be in (0, 1), got {self.meta_fraction}")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.method in SPLIT_TARGET_METHODS:
            _check(self.batch_size >= 2, "batch_size",
                   f"must be >= 2 for {self.method} (T1 and T2 parts of the target batch)")
        _check(self.label_schema in ("shared",), "label_schema", "must be 'shared'")
        _check(self.sentiment_labels in ("binary", "3way"), "sentiment_labels",
               f"must be 'binary' or '3way', got {self.sentiment_labels!r}")
        _check(re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device) is not None, "device",
               f"must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        _check(self.precision in PRECISIONS, "precision",
               f"must be one of {PRECISIONS}, got {self.precision!r}")

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config") -> TrialConfig:
        """Build from a plain dict, converting and checking every field's type."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of fields, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        kwargs = {name: coerce_field(source, name, value, hints[name]) for name, value in values.items()}
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> TrialConfig:
        """Load a YAML file (safe loader); `overrides` win over the file."""
        values = load_yaml_mapping(path)
        values = values.get("config", values)  # exported files nest the config
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: config: expected a mapping of fields, got "
                              f"{type(values).__name__}")
        hints = typing.get_type_hints(cls)
        for name, value in (overrides or {}).items():  # a bad flag is named as the flag
            if name in hints:
                coerce_field(f"--{name.replace('_', '-')}", name, value, hints[name])
        values = {**values, **(overrides or {})}
        return cls.from_dict(values, source=str(path))

    @property
    def sources(self) -> list[str]:
        """The source dataset names (several when `source` is comma-separated)."""
        return split_sources(self.source)

    def insertion_layers(self, n_layers: int) -> list[int]:
        """The RTN layers for an encoder of `n_layers` layers; ConfigError if out of range."""
        if self.rtn_layers is not None:
            layers = sorted(int(p) for p in self.rtn_layers.split(","))
        else:
            layers = [n_layers if self.rtn_layer is None else self.rtn_layer]
        name = "rtn_layers" if self.rtn_layers else "rtn_layer"
        _check(all(k <= n_layers for k in layers), name,
               f"must be in 0..{n_layers} for encoder {self.encoder!r} ({n_layers} layers), "
               f"got {self.rtn_layers or layers[0]}")
        _check(self.freeze_layers <= n_layers, "freeze_layers",
               f"must be in 0..{n_layers} for encoder {self.encoder!r}, got {self.freeze_layers}")
        if self.method in RTN_METHODS:
            _check(all(k >= self.freeze_layers for k in layers), name,
                   f"an RTN after layer {min(layers)} would sit inside the frozen layers "
                   f"(freeze_layers: {self.freeze_layers}); use layers {self.freeze_layers}..{n_layers} "
                   "or freeze fewer")
        return layers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrialConfig:
        return self.from_dict({**self.to_dict(), **changes})


def load_yaml_mapping(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader; ConfigError names the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:  # a directory, no permission, ...
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        loader = _UniqueKeyLoader(text)
        try:
            values = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if values is None:
        raise ConfigError(f"{path}: file is empty")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(values).__name__}")
    return values


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key written twice in one mapping (YAML would keep the last);
    keys brought in by a `<<` merge may still be overridden."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


def coerce_field(where: str, name: str, value, hint):
    """`value` as the type of field `name`: bool, int, float (finite), str, list of str or dict,
    or Optional of those. Text is read as the type ("3", "1e-5", "yes", "null": flags and MLflow
    params are text); ConfigError naming `where` and the field when `value` is not of the type."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    base = typing.get_origin(hint) or hint
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{where}: {name}: must not be null")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
        elif base is int:
            if not (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
                return int(value)
        elif base is float:
            if not isinstance(value, bool) and math.isfinite(float(value)):
                return float(value)
        elif base is str:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
        elif base is list:
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
        elif base is dict:
            if isinstance(value, dict):
                return value
    except (TypeError, ValueError, OverflowError):
        pass
    expected = "list of str" if base is list else base.__name__
    raise ConfigError(f"{where}: {name}: expected {expected}{' or null' if optional else ''}, "
                      f"got {value!r}")
