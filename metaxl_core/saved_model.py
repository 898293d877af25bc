"""A trained model without its RTN (the RTN is used only in training), saved as a folder that
loads and predicts with no training code and no data:

    folder/encoder/       the whole encoder and its fast tokenizer (Hugging Face save_pretrained)
    folder/head.pt        the classifier's weight and bias
    folder/metaxl.json    task, labels, max_seq_length, the trial config and its scores

    python -m metaxl_core.train --config exports/yor.yaml --save-model models/yor
    model = load_model("models/yor")
    model.predict([["Ọ̀gbẹ́ni", "Tinubu", "lọ", "sí", "Abuja"]])   # [["O", "B-PER", "O", "O", "B-LOC"]]

A model trained at the cached fidelity (`freeze_layers: k`) is saved whole: the base encoder's
embeddings and layers 1..k under the trained layers. A trimmed vocabulary (`trim_vocab`) is
put back into the full embedding matrix, so any text can be tagged.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from metaxl_core import data as data_lib
from metaxl_core.config import TrialConfig
from metaxl_core.encoders import load_encoder
from metaxl_core.errors import MetaXLError
from metaxl_core.model import MetaXLModel, layers_path
from metaxl_core.train import evaluate, predict, resolve_device

FORMAT = 1  # metaxl.json's "format": bump when the folder layout changes
INFO_FILE = "metaxl.json"


def full_encoder(model: MetaXLModel, base_encoder) -> torch.nn.Module:
    """The whole encoder `model` was trained as, built on a copy of `base_encoder` (the encoder
    the trial loaded): trained layers moved back above the frozen ones, trimmed embedding rows
    put back in the full matrix."""
    full = copy.deepcopy(base_encoder)
    trained = dict(model.encoder.state_dict())
    if model.frozen_layers:
        prefix = layers_path(full) + "."
        renamed = {}
        for key, value in trained.items():
            if key.startswith(prefix):
                index, rest = key[len(prefix):].split(".", 1)
                key = f"{prefix}{int(index) + model.frozen_layers}.{rest}"
            renamed[key] = value
        trained = renamed
    kept = getattr(model.encoder.config, "metaxl_kept_token_ids", None)
    if kept is not None:
        embedding = full.get_input_embeddings().weight
        name = next(n for n, p in full.named_parameters() if p is embedding)
        rows = embedding.detach().clone()
        rows[torch.tensor(kept)] = trained[name]
        trained[name] = rows
    missing, unexpected = full.load_state_dict(trained, strict=False)

    def was_frozen(key: str) -> bool:  # the embeddings and layers 1..K keep the base weights
        return bool(model.frozen_layers) and (
            not key.startswith(prefix) or int(key[len(prefix):].split(".")[0]) < model.frozen_layers)
    lost = sorted(k for k in missing if not was_frozen(k))
    if lost or unexpected:
        raise RuntimeError(f"cannot rebuild the full encoder: missing {lost}, unexpected {unexpected}")
    return full


def check_model_folder(folder: str | Path, overwrite: bool = False) -> None:
    """MetaXLError unless a model may be saved in `folder`: absent, empty, a previous saved model
    (it holds metaxl.json) or, with `overwrite`, any folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MetaXLError(f"{folder}: exists and is not a folder; name a folder to save the "
                          "model in")
    if (folder.is_dir() and not overwrite and not (folder / INFO_FILE).is_file()
            and any(folder.iterdir())):
        raise MetaXLError(f"{folder}: exists and is not a saved model (no {INFO_FILE}); name "
                          "another folder, or pass --overwrite to replace it")


def save_model(folder: str | Path, model: MetaXLModel, base: tuple, cfg: TrialConfig,
               labels: list[str], scores: dict, overwrite: bool = False) -> Path:
    """Write `model` (without its RTN) to `folder`, replacing it if `check_model_folder`
    allows; `base` is the trial's (base encoder, tokenizer). The folder appears complete or not
    at all."""
    base_encoder, tokenizer = base
    folder = Path(folder)
    check_model_folder(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        encoder = full_encoder(model, base_encoder)
        encoder.save_pretrained(tmp / "encoder")
        tokenizer.save_pretrained(tmp / "encoder")
        torch.save({k: v.detach().cpu() for k, v in model.classifier.state_dict().items()},
                   tmp / "head.pt")
        info = {"format": FORMAT, "task": cfg.task, "labels": labels,
                "max_seq_length": cfg.max_seq_length, "trial": cfg.to_dict(),
                "scores": {k: float(v) for k, v in scores.items()}}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class SavedModel:
    """A saved model, loaded: `predict` tags word lists (NER) or labels texts (sentiment)."""

    def __init__(self, folder: Path, info: dict, device: str = "auto"):
        self.folder, self.info = folder, info
        self.task, self.labels = info["task"], info["labels"]
        self.max_seq_length = info["max_seq_length"]
        self.device = resolve_device(device)
        encoder, self.tokenizer = load_encoder(str(folder / "encoder"))
        self.model = MetaXLModel(encoder, len(self.labels), self.task,
                                 encoder.config.num_hidden_layers, None)
        self.model.classifier.load_state_dict(torch.load(folder / "head.pt", weights_only=True))
        self.model.to(self.device).eval()
        self.collator = data_lib.make_collator(self.tokenizer, self.task)

    def predict(self, inputs: list) -> list:
        """NER: a list of word lists -> a tag per word (an empty list gives []); sentiment: a
        list of texts -> one label each. Words past max_seq_length subwords are tagged `O`,
        as in evaluation."""
        if self.task == "ner":
            kept = [i for i, words in enumerate(inputs) if words]
            examples = [{"tokens": list(inputs[i]), "tags": ["O"] * len(inputs[i])} for i in kept]
        else:
            kept = list(range(len(inputs)))
            examples = [{"text": text, "label": self.labels[0]} for text in inputs]
        encoded = data_lib.encode(examples, self.tokenizer, self.labels, self.task,
                                  self.max_seq_length)
        out = predict(self.model, encoded, self.collator, self.labels, self.task, self.device)
        results: list = [[] for _ in inputs]
        for i, prediction in zip(kept, out):
            results[i] = prediction
        return results

    def score(self, split: str = "test") -> dict[str, float]:
        """Scores on the trial's own target `split` ("dev" or "test"), read as in training (its
        data_root must be readable here)."""
        cfg = TrialConfig.from_dict(self.info["trial"], source=str(self.folder / INFO_FILE))
        examples = getattr(data_lib.load_task_data(cfg), f"target_{split}")
        encoded = data_lib.encode(examples, self.tokenizer, self.labels, self.task,
                                  self.max_seq_length)
        return evaluate(self.model, encoded, self.collator, self.labels, self.task, self.device)


def load_model(folder: str | Path, device: str = "auto") -> SavedModel:
    """Load a folder written by `save_model`; MetaXLError says what is wrong with it."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MetaXLError(f"model folder not found: {str(folder)!r} (save one with "
                          "`python -m metaxl_core.train ... --save-model DIR` or "
                          "`python sweeps/export.py ... --train-final`)")
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        raise MetaXLError(f"{folder}: not a saved MetaXL model (no {INFO_FILE})")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetaXLError(f"{info_path}: not valid JSON: {err}") from None
    if info.get("format") != FORMAT:
        raise MetaXLError(f"{info_path}: format {info.get('format')!r}; this version reads "
                          f"format {FORMAT}")
    return SavedModel(folder, info, device)
