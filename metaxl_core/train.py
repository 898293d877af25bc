"""Run one trial: train with one method, evaluate on the target dev and test sets each epoch,
report test at the best dev epoch.

    python -m metaxl_core.train --config trial.yaml --lr 5e-5 --output-dir runs/one
    python -m metaxl_core.train --source ner:conll2003:en --target ner:masakhaner2:yor \\
        --source-train-size 150 --epochs 3 --output-dir runs/one

`run_trial(config, report)` does the same for callers such as Ray Tune: `report(metrics,
checkpoint)` is called after each dev evaluation with flat `split/metric` numbers and, at an
epoch's end, a dict that holds everything needed to resume (pass it back as `resume_from`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from metaxl_core import data as data_lib
from metaxl_core.atomic import write_atomic
from metaxl_core.config import RTN_METHODS, SPLIT_TARGET_METHODS, TrialConfig
from metaxl_core.encoders import load_encoder, trim_vocabulary
from metaxl_core.errors import ConfigError, MetaXLError
from metaxl_core.frozen import frozen_fidelity
from metaxl_core.meta import metaxl_step, plain_step
from metaxl_core.metrics import ner_scores, sentiment_scores
from metaxl_core.model import MetaXLModel
from metaxl_core.sampling import SourceSampler, endless_batches, length_grouped_batches
from metaxl_core.selection import improves

EVAL_BATCH_SIZE = 64


# ---------------------------------------------------------------------------- preparation
# Fields that decide the tokenised data; trials that agree on them share it.
DATA_FIELDS = ("task", "source", "target", "data_root", "source_train_size", "target_train_size",
               "target_dev_size", "data_seed", "label_schema", "sentiment_labels",
               "split_index_file", "max_seq_length", "encoder", "method")


@functools.lru_cache(maxsize=4)
def _cached_encoder(name: str, seed: int):
    """Load once per worker process; trials get a deep copy. Random (tiny) encoders are
    initialised from the trial seed, pretrained ones ignore it."""
    return load_encoder(name, seed=seed)


@functools.lru_cache(maxsize=8)
def _cached_data(data_cfg: TrialConfig, tokenizer):
    """Read, sample and tokenise once per worker process (see DATA_FIELDS)."""
    task_data = data_lib.load_task_data(data_cfg)
    splits = {
        name: data_lib.encode(examples, tokenizer, task_data.labels, data_cfg.task,
                              data_cfg.max_seq_length)
        for name, examples in [("source_train", task_data.source_train),
                               ("target_train", task_data.target_train),
                               ("target_dev", task_data.target_dev),
                               ("target_test", task_data.target_test)]
    }
    return task_data, splits


def _data_config(cfg: TrialConfig) -> TrialConfig:
    """`cfg` with every field outside DATA_FIELDS at its default: the data cache key."""
    return dataclasses.replace(cfg, **{f.name: f.default for f in dataclasses.fields(cfg)
                                       if f.name not in DATA_FIELDS})


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present, else the CPU; a CUDA device this machine lacks is a
    ConfigError (never a silent fall back to the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not (torch.cuda.is_available()
                                      and (device.index or 0) < torch.cuda.device_count()):
        raise ConfigError(f"device: {name!r} is not available here ({torch.cuda.device_count()} "
                          "CUDA devices); use device: cpu or device: auto (CUDA when available)")
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 or AMX (Linux's cpuinfo flags; elsewhere no)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """"fp32" or "bf16": "auto" is bf16 where `device` has it natively."""
    if name == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return name


def autocast(precision: str, device: torch.device):
    """The context the steps and evaluations run in: bf16 autocast, or nothing for fp32.
    Without autocast's weight cache: it would keep serving the bf16 copy of a weight the
    optimizer has since updated in place, and keep every step's virtual θ' alive."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=False)


def _remap(features: list[dict], id_map: torch.Tensor) -> list[dict]:
    return [{**f, "input_ids": id_map[torch.tensor(f["input_ids"])].tolist()} for f in features]


# ---------------------------------------------------------------------------- batches
def _loader(features, collator, batch_size, seed, group_by_length=False) -> DataLoader:
    """One shuffled epoch of `features`; `group_by_length`: batches of similar length
    (`sampling.length_grouped_batches`), less padding."""
    if group_by_length:
        batches = length_grouped_batches([len(f["input_ids"]) for f in features], batch_size, seed)
        return DataLoader(features, batch_sampler=batches, collate_fn=collator)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(features, batch_size=batch_size, shuffle=True, generator=gen,
                      collate_fn=collator)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()
            if k in ("input_ids", "attention_mask", "labels")}


MOVEMENT_BATCH_SIZE = 32


def make_optimizers(cfg: TrialConfig, model: MetaXLModel) -> tuple:
    """(θ's optimizer, Φ's optimizer or None): θ with AdamW (weight_decay_mode "adamw") or Adam
    with L2 weight decay ("l2"); Φ (metaxl only) with Adam and rtn_weight_decay as L2."""
    theta_class = torch.optim.AdamW if cfg.weight_decay_mode == "adamw" else torch.optim.Adam
    theta_opt = theta_class(model.theta().values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    phi_opt = None
    if cfg.method == "metaxl":
        phi_opt = torch.optim.Adam(model.phi().values(), lr=cfg.meta_lr,
                                   weight_decay=cfg.rtn_weight_decay)
    return theta_opt, phi_opt


def clip_norm(cfg: TrialConfig) -> float:
    """The gradient-norm clipping of θ's step: metaxl_max_grad_norm for metaxl where set, else
    max_grad_norm (every other method)."""
    if cfg.method == "metaxl" and cfg.metaxl_max_grad_norm is not None:
        return cfg.metaxl_max_grad_norm
    return cfg.max_grad_norm


def _movement_batches(cfg: TrialConfig, model: MetaXLModel, source, sizes: list[int], collator,
                      device) -> list[tuple[int, dict]]:
    """Fixed source batches on which `_rtn_movement` is measured: the first sentences of each
    source (through its own RTNs when there is one set per source); none without an RTN."""
    if model.rtn is None:
        return []
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [(i, _to(collator(source.features[start:start + min(MOVEMENT_BATCH_SIZE, size)]), device))
            for i, (start, size) in enumerate(zip(starts, sizes))
            if model.rtn_sets > 1 or i == 0]


def _rtn_movement(model: MetaXLModel, batches: list[tuple[int, dict]]) -> dict[str, float]:
    """`rtn/movement`: the mean relative change ||RTN(h) - h|| / ||h|| the RTNs make to the fixed
    source batches (0 = identity), and `rtn/movement_L<k>` per layer when there are several."""
    per_layer: dict[int, list[float]] = {}
    for source_index, batch in batches:
        for layer, value in model.rtn_movement(batch, source_index).items():
            per_layer.setdefault(layer, []).append(value)
    if not per_layer:
        return {}
    means = {layer: sum(v) / len(v) for layer, v in per_layer.items()}
    out = {"rtn/movement": sum(means.values()) / len(means)}
    if len(means) > 1:
        out.update({f"rtn/movement_L{layer}": value for layer, value in means.items()})
    return out


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model: MetaXLModel, encoded, collator, labels: list[str], task: str,
            device: torch.device) -> list:
    """The predicted label of each example of `encoded`: for NER a tag per word, words cut off
    by truncation tagged `O`; for sentiment one label."""
    model.eval()
    features = encoded.features  # batched by length (least padding), answered in their order
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    predictions: list = [None] * len(features)
    for start in range(0, len(order), EVAL_BATCH_SIZE):
        rows = order[start:start + EVAL_BATCH_SIZE]
        batch = _to(collator([features[i] for i in rows]), device)
        best = model(batch["input_ids"], batch["attention_mask"]).argmax(-1)
        for i, row, row_labels in zip(rows, best, batch["labels"]):
            predictions[i] = ([labels[k] for k in row[row_labels != -100].tolist()]
                              if task == "ner" else labels[row.item()])
    model.train()
    if task == "ner":
        return [p + ["O"] * (len(g) - len(p)) for p, g in zip(predictions, encoded.gold)]
    return predictions


TRIMMED_VOCAB_SCORING = "scoring other data (score_on) needs the full vocabulary: turn trim_vocab off"


def score_other(model: MetaXLModel, cfg: TrialConfig, labels: list[str], examples: list[dict],
                device: torch.device) -> dict:
    """Scores of a trained trial model on examples of another dataset (e.g. another target's
    test split). NER is scored on the entity types the model and `examples` share (`types`):
    other gold types and predicted types are folded into O, as trials fold theirs."""
    base_encoder, tokenizer = _cached_encoder(cfg.encoder, cfg.seed)
    if cfg.trim_vocab and not cfg.freeze_layers:
        raise ConfigError(TRIMMED_VOCAB_SCORING)
    collator = data_lib.make_collator(tokenizer, cfg.task)
    shared = None
    if cfg.task == "ner":
        shared = {label[2:] for label in labels if label != "O"} & data_lib.entity_types(examples)
        examples = data_lib.fold_types(examples, shared)[0]
    encoded = {"other": data_lib.encode(examples, tokenizer, labels, cfg.task, cfg.max_seq_length)}
    if cfg.freeze_layers:
        _, encoded, collator = frozen_fidelity(base_encoder, cfg.encoder, cfg.freeze_layers,
                                               encoded, collator)
    predictions = predict(model, encoded["other"], collator, labels, cfg.task, device)
    if cfg.task != "ner":
        return sentiment_scores(encoded["other"].gold, predictions, labels)
    predictions = [[tag if tag == "O" or tag[2:] in shared else "O" for tag in row]
                   for row in predictions]
    return {**ner_scores(encoded["other"].gold, predictions), "types": sorted(shared)}


def evaluate(model: MetaXLModel, encoded, collator, labels: list[str], task: str,
             device: torch.device) -> dict[str, float]:
    """Scores on one split. NER words cut off by truncation are predicted `O`, so the score is
    always over every gold word."""
    predictions = predict(model, encoded, collator, labels, task, device)
    if task == "ner":
        return ner_scores(encoded.gold, predictions)
    return sentiment_scores(encoded.gold, predictions, labels)


# ---------------------------------------------------------------------------- training
def build_trial(cfg: TrialConfig, device: torch.device):
    """The trial's model (seeded, on `device`, its vocabulary trimmed when `trim_vocab`), task
    data, tokenised splits and collator, exactly as `run_trial` trains them."""
    base_encoder, tokenizer = _cached_encoder(cfg.encoder, cfg.seed)
    rtn_layers = cfg.insertion_layers(base_encoder.config.num_hidden_layers)
    task_data, splits = _cached_data(_data_config(cfg), tokenizer)
    collator = data_lib.make_collator(tokenizer, cfg.task)
    if cfg.freeze_layers:  # the top layers only, on cached states (no embeddings to trim)
        top, splits, collator = frozen_fidelity(base_encoder, cfg.encoder, cfg.freeze_layers,
                                                splits, collator)
        encoder = copy.deepcopy(top)
    else:
        encoder = copy.deepcopy(base_encoder)
        if cfg.trim_vocab:
            used = {i for split in splits.values() for f in split.features for i in f["input_ids"]}
            id_map = trim_vocabulary(encoder, used)
            splits = {name: dataclasses.replace(s, features=_remap(s.features, id_map))
                      for name, s in splits.items()}
    torch.manual_seed(cfg.seed)
    model = MetaXLModel(encoder, len(task_data.labels), cfg.task, rtn_layers,
                        cfg.rtn_width if cfg.method in RTN_METHODS else None,
                        rtn_sets=len(cfg.sources) if cfg.rtn_per_source else 1,
                        rtn_mixing=cfg.rtn_mixing, rtn_design=cfg.rtn_design,
                        frozen_layers=cfg.freeze_layers).to(device)
    if cfg.method == "frozen_rtn":
        for param in model.phi().values():
            param.requires_grad_(False)
    return model, task_data, splits, collator


def run_trial(config: TrialConfig | dict, report=None, *, resume_from: dict | None = None,
              progress: bool = False, model_dir: str | Path | None = None,
              overwrite_model: bool = False, score_on: dict[str, list[dict]] | None = None) -> dict:
    """Train and evaluate one configuration; returns the results dict (also written to
    `output_dir/results.json` when set).

    Args:
        config: a TrialConfig or a dict of its fields.
        report: optional `report(metrics, checkpoint)` called after every dev evaluation (`step`:
            updates so far); `checkpoint` is None for those inside an epoch (a resume starts
            after the last epoch end).
        resume_from: a checkpoint dict given to `report` earlier; training continues after it.
        progress: show a tqdm bar per epoch.
        model_dir: save the best dev model there, without its RTN (`metaxl_core.saved_model`);
            a folder that is not a saved model is refused before training unless `overwrite_model`.
        score_on: {name: examples} of other datasets the best dev model also scores (`score_other`),
            in results["scored_on"][name].
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    if cfg.output_dir and os.path.exists(cfg.output_dir) and not os.path.isdir(cfg.output_dir):
        raise ConfigError(f"output_dir: {cfg.output_dir} exists and is not a folder")
    if score_on and cfg.trim_vocab and not cfg.freeze_layers:
        raise ConfigError(TRIMMED_VOCAB_SCORING)
    if model_dir is not None:
        from metaxl_core.saved_model import check_model_folder  # it imports this module

        check_model_folder(model_dir, overwrite_model)
    started, cpu_started = time.perf_counter(), time.process_time()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    model, task_data, splits, collator = build_trial(cfg, device)
    labels, rtn_layers, n_sources = task_data.labels, list(model.rtn_layers), len(cfg.sources)
    model.train()

    uses_source = cfg.method != "target_only"
    steps_data = splits["source_train"] if uses_source else splits["target_train"]
    steps_per_epoch = math.ceil(len(steps_data.features) / cfg.batch_size)
    sampler = SourceSampler(cfg, task_data.source_sizes) if uses_source and n_sources > 1 else None
    total_steps = steps_per_epoch * cfg.epochs
    theta_opt, phi_opt = make_optimizers(cfg, model)
    scheduler = get_linear_schedule_with_warmup(theta_opt, int(cfg.warmup_ratio * total_steps),
                                                total_steps)
    phi_scheduler = None
    if cfg.method == "metaxl":  # as released: Φ's lr has the same warm-up and decay as θ's
        phi_scheduler = get_linear_schedule_with_warmup(phi_opt, int(cfg.warmup_ratio * total_steps),
                                                        total_steps)

    movement_batches = _movement_batches(cfg, model, steps_data, task_data.source_sizes, collator,
                                         device)
    movement_init = _rtn_movement(model, movement_batches)

    history: list[dict] = []  # one row per epoch: train losses, dev scores, RTN movement
    evaluations: list[dict] = []  # every dev evaluation: the dev curve
    best: dict = {"dev/f1": -math.inf}  # the best dev evaluation so far (earliest on a tie)
    best_state: dict | None = None  # the model at that evaluation, on the CPU
    first_epoch = updates = 0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        theta_opt.load_state_dict(resume_from["theta_optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        if phi_opt is not None:
            phi_opt.load_state_dict(resume_from["phi_optimizer"])
            phi_scheduler.load_state_dict(resume_from["phi_scheduler"])
        if sampler is not None:
            sampler.load_state_dict(resume_from["sampler"])
        torch.set_rng_state(resume_from["torch_rng"])
        history, evaluations = list(resume_from["history"]), list(resume_from["evaluations"])
        best, best_state = dict(resume_from["best"]), resume_from["best_state"]
        first_epoch, updates = resume_from["epoch"] + 1, resume_from["updates"]
        cpu_started -= resume_from.get("cpu_s", 0.0)  # this trial's CPU seconds before it

    def evaluate_dev(epoch: int) -> dict:
        """Score dev now; keep the model if it is the best so far. Returns the dev scores."""
        nonlocal best, best_state
        scores = {f"dev/{k}": v for k, v in evaluate(model, splits["target_dev"], collator, labels,
                                                     cfg.task, device).items()}
        evaluations.append({"step": updates, "epoch": epoch + 1, **scores})
        if improves(scores["dev/f1"], best["dev/f1"]):
            best = evaluations[-1]
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return scores

    def test_best() -> dict:
        """The test split, once, with the model of the best dev evaluation (left loaded)."""
        model.load_state_dict(best_state)
        test = splits["target_test"]
        scores = evaluate(model, test, collator, labels, cfg.task, device)
        if test.n_words:  # NER: the share of words cut by max_seq_length, next to its F1
            scores["words_cut"] = test.n_words_cut / test.n_words
        return {f"test/{k}": v for k, v in scores.items()}

    def cost() -> dict:
        """What the trial cost so far (not in history, which repeats exactly): updates, CPU
        seconds of this process, seconds on a GPU."""
        return {"cost/updates": updates, "cost/cpu_s": time.process_time() - cpu_started,
                "cost/gpu_s": time.perf_counter() - started if device.type == "cuda" else 0.0}

    final_test = None
    n_meta = min(cfg.batch_size - 1, max(1, round(cfg.batch_size * cfg.meta_fraction)))
    timing = {"time/setup_s": time.perf_counter() - started, "time/train_s": 0.0, "time/eval_s": 0.0}
    with autocast(precision, device):  # fp32 master weights, optimizer state and cache
        for epoch in range(first_epoch, cfg.epochs):
            epoch_started = time.perf_counter()
            eval_seconds = 0.0
            epoch_seed = cfg.seed * 1000 + epoch
            target_batches = endless_batches(splits["target_train"].features, cfg.batch_size,
                                              epoch_seed)
            if sampler is None:
                step_batches = ((0, b) for b in _loader(steps_data.features, collator, cfg.batch_size,
                                                        epoch_seed, cfg.group_by_length))
            else:
                step_batches = sampler.batches(steps_data.features, collator, cfg.batch_size,
                                               steps_per_epoch, epoch_seed)
            bar = tqdm(step_batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not progress, leave=False)
            losses: dict[str, float] = {}
            for index, (source_index, batch) in enumerate(bar):
                batch = _to(batch, device)
                if cfg.method in SPLIT_TARGET_METHODS:
                    target = next(target_batches)
                    t1 = _to(collator(target[:cfg.batch_size - n_meta]), device)
                if cfg.method == "metaxl":
                    t2 = _to(collator(target[cfg.batch_size - n_meta:]), device)
                    step = metaxl_step(model, theta_opt, phi_opt, batch, t1, t2,
                                       virtual_lr=cfg.virtual_lr or scheduler.get_last_lr()[0],
                                       mode=cfg.hypergradient,
                                       max_grad_norm=clip_norm(cfg), source_index=source_index,
                                       theta_step=cfg.theta_step)
                    if sampler is not None:
                        sampler.update(source_index, step["grad_alignment"])
                    phi_scheduler.step()
                elif cfg.method == "frozen_rtn":
                    step = plain_step(model, theta_opt, [t1], cfg.max_grad_norm, rtn_batch=batch,
                                      source_index=source_index)
                elif cfg.method == "joint_t1":
                    step = plain_step(model, theta_opt, [batch, t1], cfg.max_grad_norm)
                elif cfg.method == "joint":
                    target = _to(collator(next(target_batches)), device)
                    step = plain_step(model, theta_opt, [batch, target], cfg.max_grad_norm)
                else:  # source_only, target_only: one language
                    step = plain_step(model, theta_opt, [batch], cfg.max_grad_norm)
                scheduler.step()
                updates += 1
                for key, value in step.items():
                    losses[key] = losses.get(key, 0.0) + value / steps_per_epoch
                bar.set_postfix({k: f"{v:.3f}" for k, v in step.items()})
                if cfg.eval_every and updates % cfg.eval_every == 0 and index + 1 < steps_per_epoch:
                    eval_started = time.perf_counter()
                    scores = evaluate_dev(epoch)
                    eval_seconds += time.perf_counter() - eval_started
                    if report is not None:  # no checkpoint mid-epoch: a resume redoes the epoch
                        report({"epoch": epoch + 1, "step": updates, **scores,
                                "best/dev_f1": best["dev/f1"], "best/step": best["step"],
                                "best/epoch": best["epoch"], **cost()}, None)
            eval_started = time.perf_counter()
            metrics = {"epoch": epoch + 1, "step": updates,
                       **{f"train/{k}": v for k, v in losses.items()},
                       **(sampler.metrics() if sampler is not None else {}),
                       **_rtn_movement(model, movement_batches), **evaluate_dev(epoch)}
            if cfg.test_every_eval:
                metrics.update({f"test/{k}": v for k, v in evaluate(
                    model, splits["target_test"], collator, labels, cfg.task, device).items()})
            metrics.update({"best/dev_f1": best["dev/f1"], "best/step": best["step"],
                            "best/epoch": best["epoch"]})
            if epoch + 1 == cfg.epochs:
                final_test = test_best()
                metrics.update({"best/test_f1": final_test["test/f1"],
                                **{f"final/{k}": v for k, v in final_test.items()}})
            timing["time/eval_s"] += eval_seconds + time.perf_counter() - eval_started
            timing["time/train_s"] += eval_started - epoch_started - eval_seconds
            history.append(metrics)
            if progress:
                print(_format_epoch(metrics), flush=True)
            if report is not None:
                # with cumulative seconds of loading + tokenising, training steps and evaluation, and cost
                spent = cost()
                report({**metrics, **timing, **spent}, {
                    "epoch": epoch, "updates": updates, "cpu_s": spent["cost/cpu_s"],
                    "history": list(history),
                    "evaluations": list(evaluations), "best": best, "best_state": best_state,
                    "model": model.state_dict(),
                    "theta_optimizer": theta_opt.state_dict(), "scheduler": scheduler.state_dict(),
                    "phi_optimizer": phi_opt.state_dict() if phi_opt is not None else None,
                    "phi_scheduler": phi_scheduler.state_dict() if phi_opt is not None else None,
                    "sampler": sampler.state_dict() if sampler is not None else None,
                    "torch_rng": torch.get_rng_state(),
                })

        if final_test is None:  # resumed after its last epoch
            final_test = test_best()
        scored_on = {name: score_other(model, cfg, labels, examples, device)  # the best dev model
                     for name, examples in (score_on or {}).items()}
    wall = time.perf_counter() - started
    results = {
        "config": cfg.to_dict(),
        "rtn_layers": rtn_layers,
        "labels": labels,
        "data": {**task_data.notes, **{
            f"{name}_size": len(s.features) for name, s in splits.items()},
            "truncated": {name: s.n_truncated for name, s in splits.items()},
            "words_cut": {name: s.n_words_cut / max(s.n_words, 1) for name, s in splits.items()
                          if s.n_words},
            "unk_words": {name: s.n_unk_words for name, s in splits.items()}},
        "rtn_movement_init": movement_init,
        "history": history,
        "evaluations": evaluations,
        "best_epoch": best["epoch"],
        "best_step": best["step"],
        "final": {**{k: v for k, v in best.items() if k.startswith("dev/")}, **final_test},
        **({"scored_on": scored_on} if scored_on else {}),
        "wall_time_s": round(wall, 3),
        "cpu_time_s": round(time.process_time() - cpu_started, 3),
        "timing_s": {k.split("/")[1][:-2]: round(v, 3) for k, v in timing.items()},
        "steps_per_s": round(steps_per_epoch * (cfg.epochs - first_epoch) / wall, 3),
        "device": str(device),
        "precision": precision,
        "torch": torch.__version__,
    }
    if model_dir is not None:  # the model of the best dev evaluation is loaded (test_best)
        from metaxl_core.saved_model import save_model  # it imports this module

        save_model(model_dir, model, _cached_encoder(cfg.encoder, cfg.seed), cfg, labels,
                   results["final"], overwrite_model)
    if cfg.output_dir:
        write_results(Path(cfg.output_dir), results)
    return results


def _format_epoch(metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if k == "epoch" or k.endswith(("f1", "loss"))}
    return "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def write_results(output_dir: Path, results: dict) -> None:
    """Write results.json and trial.yaml atomically: a file either is complete or absent."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in [("trial.yaml", yaml.safe_dump(results["config"], sort_keys=True)),
                       ("results.json", json.dumps(results, indent=2, sort_keys=True))]:
        write_atomic(output_dir / name, text)


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="trial YAML (a TrialConfig mapping, or an exported file)")
    parser.add_argument("--save-model", metavar="DIR", help="save the best dev model (without "
                        "its RTN) in DIR, for `python -m metaxl_core.predict --model DIR`")
    parser.add_argument("--overwrite", action="store_true", help="with --save-model: replace DIR "
                        "even when it is not a saved model (a saved model is always replaced)")
    for f in dataclasses.fields(TrialConfig):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=None, metavar="VALUE",
                            help=f"(default: {f.default!r})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("config", "save_model", "overwrite") and v is not None}
    try:
        if args.config:
            cfg = TrialConfig.from_yaml(args.config, overrides)
        else:
            cfg = TrialConfig.from_dict(overrides, source="command line")
        print(f"trial: {cfg.method} {cfg.source or '-'} -> {cfg.target} on {cfg.encoder}",
              flush=True)
        results = run_trial(cfg, progress=True, model_dir=args.save_model,
                            overwrite_model=args.overwrite)
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    final = results["final"]
    print(f"best epoch {results['best_epoch']}: dev f1 {final['dev/f1']:.4f}, "
          f"test f1 {final['test/f1']:.4f}  ({results['wall_time_s']:.1f} s)")
    if cfg.output_dir:
        print(f"results: {Path(cfg.output_dir) / 'results.json'}")
    if args.save_model:
        print(f"model: {args.save_model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
