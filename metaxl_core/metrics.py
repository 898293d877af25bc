"""Task metrics. NER: seqeval entity micro-F1 on word-level tags. Sentiment: `f1` = macro-F1 over
the labels kept (binary: negative and positive; 3way: all three), so a constant classifier scores
low however imbalanced the split; for binary labels `pos_f1` is the positive-class F1 the paper
reported. Every task reports its headline number, the one selection maximises, as `f1`."""

from __future__ import annotations

from seqeval.metrics import f1_score as entity_f1
from seqeval.metrics import precision_score, recall_score
from sklearn.metrics import accuracy_score
from sklearn.metrics import f1_score as label_f1


def ner_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (seqeval, conlleval rules) over sentences."""
    return {
        "f1": float(entity_f1(gold, pred, zero_division=0)),
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
    }


def sentiment_scores(gold: list[str], pred: list[str], labels: list[str]) -> dict[str, float]:
    """`f1` (macro-F1 over `labels`), `acc`, `weighted_f1` (support-weighted F1: with 3way labels
    the AfriSenti shared task's metric), `pos_f1` (positive-class F1, binary labels only) and
    `n_<label>`, the gold count of each label (what a constant classifier's scores follow from)."""
    scores = {
        "f1": float(label_f1(gold, pred, labels=labels, average="macro", zero_division=0)),
        "acc": float(accuracy_score(gold, pred)),
        "weighted_f1": float(label_f1(gold, pred, labels=labels, average="weighted",
                                      zero_division=0)),
    }
    if labels == ["negative", "positive"]:
        scores["pos_f1"] = float(label_f1(gold, pred, pos_label="positive", average="binary",
                                          zero_division=0))
    return {**scores, **{f"n_{label}": gold.count(label) for label in labels}}
