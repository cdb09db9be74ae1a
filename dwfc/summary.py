"""What a finished run measured, in the shape report.json records it."""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import Recipe
from .sparsity import layer_stats
from .train import DwfOutcome


def layer_rows(model: nn.Module, names: list[str]) -> list[dict[str, Any]]:
    """Shape, size, non-zeros and sparsity of each compressed weight."""
    state = model.state_dict()
    return [
        {"name": s.name, "shape": s.shape, "weights": s.weights, "nonzero": s.nonzero,
         "sparsity": s.sparsity, "factorized": True}
        for s in layer_stats({name: state[name] for name in names})
    ]  # fmt: skip


def sparsity_summary(
    layers: list[dict[str, Any]], recipe: Recipe, outcome: DwfOutcome, total_params: int
) -> dict[str, Any]:
    """Target against achieved, and how much of it training reached before the cut."""
    weights = sum(s["weights"] for s in layers)
    nonzero = sum(s["nonzero"] for s in layers)
    sc = recipe.sparsity
    return {
        "target": sc.target,
        "achieved": 1.0 - nonzero / weights,
        "reached_by_training_eps": outcome.sparsity_eps,
        "reached_by_training_relative": outcome.sparsity_relative,
        "reached_by_training_controlled": outcome.sparsity_controlled,
        "largest_cut_relative": outcome.largest_cut,
        "eps": sc.eps,
        "relative_threshold": sc.relative_threshold,
        "control_threshold": sc.control_threshold,
        "factorized_weights": weights,
        "nonzero_weights": nonzero,
        "compression_ratio": weights / nonzero if nonzero else float("inf"),
        "total_parameters": total_params,
        "unfactorized_parameters": total_params - weights,
    }


def method_summary(recipe: Recipe, outcome: DwfOutcome) -> dict[str, Any]:
    """The method and its final settings; DWF-only entries are None for the baselines."""
    name = recipe.sparsity.method
    common = {
        "name": name, "lr": recipe.train.lr, "optimizer": "sgd",
        "schedule": recipe.train.schedule, "divergence_restarts": outcome.retries,
        "lr_factor": outcome.lr_factor,
    }  # fmt: skip
    if name != "dwf":
        from .baselines import DEFAULT_WEIGHT_DECAY

        l1 = name == "l1"
        return {
            **common, "depth": None, "init": None,
            "weight_decay": getattr(recipe.train, "weight_decay", DEFAULT_WEIGHT_DECAY),
            "lambda": outcome.lam if l1 else None,
            "lambda_history_max": outcome.lam_max if l1 else None,
        }  # fmt: skip
    depth = recipe.factorize.depth
    return {
        **common, "depth": depth, "init": recipe.factorize.init,
        "weight_decay": 2 * outcome.lam / depth,  # per factor, for weights of the recipe's depth
        "lambda": outcome.lam, "lambda_history_max": outcome.lam_max,
    }  # fmt: skip


def warnings_for(report: dict[str, Any]) -> list[str]:
    """Plain-language warnings for things the numbers show but a reader could miss."""
    notes = []
    acc = report["accuracy"]
    cost = acc.get("before_cut", 0.0) - acc.get("after_cut", 0.0)
    if report["method"]["name"] == "dwf" and cost > 0.003 + 1e-9:  # more than 0.3 points
        notes.append(
            f"the exact cut cost {100 * cost:.1f} points: DWF training had not made all the "
            "removed weights negligible; train longer (train.epochs) or start from a larger "
            "sparsity.lambda_init"
        )
    if any(layer["nonzero"] == 0 for layer in report["layers"]):
        empty = [layer["name"] for layer in report["layers"] if layer["nonzero"] == 0]
        notes.append(f"layer collapse: every weight of {', '.join(empty)} was pruned")
    return notes


def gate_results(recipe: Recipe, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each configured quality gate, its threshold, the measured value and whether it passed."""
    gates = []
    drop = recipe.gates.max_accuracy_drop
    if drop is not None:
        acc = report["accuracy"]
        lost = 100.0 * (acc["original"] - acc["compressed_pytorch"])
        gates.append({"gate": "max_accuracy_drop", "threshold": drop, "value": lost,
                      "passed": lost <= drop})  # fmt: skip
    floor = recipe.gates.min_sparsity
    if floor is not None:
        achieved = report["sparsity"]["achieved"]
        gates.append({"gate": "min_sparsity", "threshold": floor, "value": achieved,
                      "passed": achieved >= floor})  # fmt: skip
    return gates
