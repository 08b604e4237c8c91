"""Choosing τ and the static depth from per-exit probabilities (numpy only; no model runs here).

The exit rule: a text leaves at the first exit i whose max probability is >= τ; τ >= 1 never exits early
(a float32 softmax can round to exactly 1.0, so ">= 1" is treated as "never").
"""

from __future__ import annotations

import numpy as np

# Two-class confidences crowd near 1, so the grid is fine there.
TAU_GRID = tuple(float(t) for t in np.round(np.concatenate([
    np.arange(0.5, 0.99, 0.01), [0.99, 0.992, 0.994, 0.996, 0.997, 0.998, 0.999, 0.9995, 0.9998, 1.0]]), 4))


def exit_index(probs: np.ndarray, tau: float) -> np.ndarray:
    """[N] 0-based exit of every text, from [N, L, C] probabilities."""
    N, L, _ = probs.shape
    if tau >= 1.0:
        return np.full(N, L - 1)
    confident = probs[:, :-1].max(-1) >= tau  # [N, L-1]; the last exit always answers
    return np.where(confident.any(1), confident.argmax(1), L - 1)


def evaluate_tau(probs: np.ndarray, labels: np.ndarray, tau: float) -> dict:
    N, L, _ = probs.shape
    ex = exit_index(probs, tau)
    pred = probs[np.arange(N), ex].argmax(-1)
    full = probs[:, -1].argmax(-1)
    return {
        "tau": tau,
        "accuracy": float((pred == labels).mean()),
        "agreement_with_full": float((pred == full).mean()),
        "mean_exit_layer": float((ex + 1).mean()),
        "layer_speedup": float(L / (ex + 1).mean()),
        "exit_distribution": [float((ex == i).mean()) for i in range(L)],
    }


def choose_tau(probs: np.ndarray, labels: np.ndarray, max_accuracy_drop: float, grid=TAU_GRID) -> tuple[float, list[dict]]:
    """The smallest τ on the grid whose accuracy drop (points, vs never exiting) is within the budget,
    and so is every larger τ: requiring the whole tail keeps one lucky grid point from being chosen."""
    full_acc = evaluate_tau(probs, labels, 1.0)["accuracy"]
    rows = [evaluate_tau(probs, labels, t) for t in sorted(set(grid) | {1.0})]
    chosen = 1.0
    for r in reversed(rows):  # from τ = 1 downwards, while the budget holds
        if 100 * (full_acc - r["accuracy"]) > max_accuracy_drop + 1e-9:
            break
        chosen = r["tau"]
    for r in rows:
        r["accuracy_drop_points"] = 100 * (full_acc - r["accuracy"])
    return chosen, rows


def depth_table(probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Accuracy of exit k used alone (the static model that keeps layers 1..k and head k)."""
    L = probs.shape[1]
    return [{"depth": k + 1, "accuracy": float((probs[:, k].argmax(-1) == labels).mean())} for k in range(L)]


def choose_depth(table: list[dict], max_accuracy_drop: float) -> int:
    full = table[-1]["accuracy"]
    for row in table:
        if 100 * (full - row["accuracy"]) <= max_accuracy_drop + 1e-9:
            return row["depth"]
    return table[-1]["depth"]
