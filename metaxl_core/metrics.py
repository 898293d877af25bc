"""Task metrics. NER: seqeval entity micro-F1 on word-level tags. Sentiment: macro-F1 and
accuracy, and `f1` = positive-class F1 when the labels are binary (as the paper reported),
macro-F1 otherwise. Every task reports its headline number as `f1`."""

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
    """Accuracy, macro-F1, and the headline `f1` (positive-class F1 for binary labels)."""
    scores = {
        "acc": float(accuracy_score(gold, pred)),
        "macro_f1": float(label_f1(gold, pred, labels=labels, average="macro", zero_division=0)),
    }
    if labels == ["negative", "positive"]:
        scores["f1"] = float(label_f1(gold, pred, pos_label="positive", average="binary",
                                      zero_division=0))
    else:
        scores["f1"] = scores["macro_f1"]
    return scores
