"""Classification metrics with pyskl's definitions: top-k accuracy, mean class accuracy, confusion matrix; and the
mean negative log-likelihood that recipes are chosen on (docs/small_data.md)."""

from __future__ import annotations

import numpy as np


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the k highest scores (k capped at the class count)."""
    k = min(k, scores.shape[1])
    top = np.argsort(scores, axis=1)[:, -k:]
    return float((top == labels[:, None]).any(axis=1).mean())


def mean_nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class under ``probs`` (rows of class probabilities)."""
    return float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean())


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    return np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class recall over the classes that occur as label or prediction (pyskl: a class that is
    predicted but never the label counts as 0)."""
    pred = scores.argmax(axis=1)
    cm = confusion_matrix(pred, labels, scores.shape[1])
    present = np.union1d(pred, labels)
    counts, hits = cm.sum(axis=1)[present], np.diag(cm)[present]
    return float(np.mean(np.where(counts > 0, hits / np.maximum(counts, 1), 0.0)))


def metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "top1": top_k_accuracy(scores, labels, 1),
        "top5": top_k_accuracy(scores, labels, 5),
        "mean_class_accuracy": mean_class_accuracy(scores, labels),
        "samples": len(labels),
    }
