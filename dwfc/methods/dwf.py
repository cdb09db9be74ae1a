"""Deep Weight Factorization: train the D Hadamard factors of each weight with weight decay.

Weight decay 2 * lambda / D on every factor is exactly the L_{2/D} penalty
lambda * sum |w|^(2/D) on the collapsed weights (../shared/dwf-method.md); lambda is steered to
the target by the controller (docs/controller.md). After the sparsify phase, the exact global
magnitude cut, then a masked fine-tune with a fresh optimizer and no decay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torch.optim import Optimizer

from dwfc.config import Recipe
from dwfc.engine.schedule import Schedule
from dwfc.errors import InputError
from dwfc.factorize import apply_plan_, factorized_weights, set_masks
from dwfc.methods.base import Method
from dwfc.sparsity import fraction_below, global_magnitude_masks, largest_cut

if TYPE_CHECKING:
    from dwfc.engine.outcome import TrainOutcome
    from dwfc.engine.trainer import Trainer

CUT_COST_WARNING = 0.003  # accuracy the exact cut may cost before the report warns (0.3 points)


def lr_scales(
    rms: dict[str, float], depths: dict[str, int], mode: str, cap: float
) -> dict[str, float]:
    # A weight of size |w| moves about D |w|^(2(D-1)/D) times the factor learning rate; scaling
    # each layer's factor rate by the inverse at its RMS makes `lr` the rate on typical weights.
    if mode == "none":
        return dict.fromkeys(rms, 1.0)
    return {
        n: min(cap, 1.0 / (depths[n] * r ** (2.0 * (depths[n] - 1) / depths[n])))
        for n, r in rms.items()
    }


def _param_groups(model: nn.Module, scales: dict[str, float],
                  relative: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """One group per factorized weight in `scales` (decayed, its own rate), one for the rest.
    `relative` (sparsity.layer_penalty=relative): a group's decay is divided by its rate
    multiplier, so that the penalty, not only the loss, is not sped up where the rate is."""
    groups, factor_ids = [], set()
    for fw in factorized_weights(model):
        if fw.name not in scales:  # factorized, but not to be sparsified: trained plainly
            continue
        groups.append({"params": fw.factors, "lr_scale": scales[fw.name], "factor": True,
                       "depth": fw.parametrization.depth,
                       "decay_scale": 1.0 / scales[fw.name] if relative else 1.0})  # fmt: skip
        factor_ids.update(id(f) for f in fw.factors)
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in factor_ids]
    if others:
        groups.append({"params": others, "lr_scale": 1.0, "factor": False})
    return groups


def _set_hyper(opt: Optimizer, lr: float, lam: float) -> None:
    """Learning rates, and weight decay 2 lambda / D on each factor (its own weight's D)."""
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_scale"]
        group["weight_decay"] = (2.0 * lam / group["depth"] * group["decay_scale"]
                                 if group["factor"] else 0.0)  # fmt: skip


class Dwf(Method):
    name = "dwf"
    title = "Deep Weight Factorization"
    trains = "factors"

    @classmethod
    def prepare(cls, model: nn.Module, selection: Any, recipe: Recipe) -> None:
        apply_plan_(model, selection, init=recipe.factorize.init)  # the planned weights

    def __init__(self, model: nn.Module, names: list[str], recipe: Recipe, schedule: Schedule):
        if not names:
            raise InputError("sparsity.method=dwf: no weight selected to sparsify")
        factorized = {fw.name: fw for fw in factorized_weights(model)}
        missing = [n for n in names if n not in factorized]
        if missing:
            raise InputError(
                f"sparsity.method=dwf trains Hadamard factors, but {missing[0]} is not "
                "factorized: call dwfc.factorize_ on the model first"
            )
        self._factorized = [fw for name, fw in factorized.items() if name in set(names)]
        super().__init__(model, names, recipe, schedule)
        tc = recipe.train
        depths = {fw.name: fw.parametrization.depth for fw in self._factorized}
        self.scales = lr_scales(self.rms, depths, tc.lr_scaling, tc.max_lr_scale)
        self.ctl = self.make_controller(recipe.sparsity.lambda_init)

    def weights(self) -> dict[str, Tensor]:
        return {fw.name: fw.collapsed() for fw in self._factorized}

    def param_groups(self) -> list[dict[str, Any]]:
        return _param_groups(self.model, self.scales,
                             self.recipe.sparsity.layer_penalty == "relative")  # fmt: skip

    def set_masks(self, masks: dict[str, Tensor] | None, opt: Optimizer | None) -> None:
        if masks is None:
            self.masks = None
            for fw in self._factorized:
                fw.parametrization.mask = None
            return
        self.masks = {n: m.bool() for n, m in masks.items()}
        set_masks(self.model, self.masks)

    def before_step(self, trainer: Trainer, step: int, lr: float) -> None:
        _set_hyper(trainer.opt, lr, self.lam or 0.0)  # no decay once the cut is made

    def end_of_sparsify(self, trainer: Trainer) -> None:
        sc, out = self.recipe.sparsity, trainer.outcome
        weights = self.weights()
        out.sparsity_eps = fraction_below(weights, sc.eps)
        out.sparsity_relative = fraction_below(weights, self.relative)
        out.sparsity_controlled = fraction_below(weights, self.controlled)
        self.record_penalty(out)
        masks = trainer.final_cut(global_magnitude_masks(weights, sc.target))
        out.largest_cut = largest_cut(weights, masks, self.rms)
        trainer.reset_optimizer()  # the fine-tune starts without the sparsify phase's momentum

    @classmethod
    def summary(cls, recipe: Recipe, outcome: TrainOutcome) -> dict[str, Any]:
        depth = recipe.factorize.depth
        lam = outcome.lam or 0.0
        return {"depth": depth, "init": recipe.factorize.init,
                "weight_decay": 2 * lam / depth,  # per factor, for weights of the recipe's depth
                "lambda": lam, "lambda_history_max": outcome.lam_max}  # fmt: skip

    @classmethod
    def warnings(cls, accuracy: dict[str, float]) -> list[str]:
        return cut_cost_warning(accuracy, "DWF training", "weights", "sparsity.lambda_init")


def cut_cost_warning(accuracy: dict[str, float], trainer: str, removed: str,
                     lambda_key: str) -> list[str]:  # fmt: skip
    """The warning when the exact cut cost more than CUT_COST_WARNING of accuracy."""
    cost = accuracy.get("before_cut", 0.0) - accuracy.get("after_cut", 0.0)
    if cost <= CUT_COST_WARNING + 1e-9:
        return []
    return [
        f"the exact cut cost {100 * cost:.1f} points: {trainer} had not made all the removed "
        f"{removed} negligible; train longer (train.epochs) or start from a larger {lambda_key}"
    ]
