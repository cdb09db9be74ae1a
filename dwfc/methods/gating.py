"""Structured DWF (D-Gating, Kolb et al. 2025): gate each channel with D - 1 scalars, decay.

`prepare` gates the removable groups balanced (dwfc/structure/gates.py): the gated model computes
what the original did. Weight decay 2 lambda / D on each channel's omega and gates is exactly
lambda * sum_c ||w_c||^(2/D). dwfc weights lambda per group by the MACs a channel costs
(structure.penalty=macs) over the group's scale^(2/D) (structure.penalty_scale=group) and, in
groups a BatchNorm normalises, leaves the `keeps` largest channels out (they are never removed:
decaying them only shrinks the scale-free layer).
lambda is steered to the target speed-up by DWF's controller on the MAC share of the channels
under the control threshold. At the end of the ramp (as for group_gmp, the same budget): the exact
cut by channel norm to the target; the rest of the sparsify phase and the fine-tune train the
masked gates and omegas, at the same per-group rates, with a fresh optimizer and no decay.
(Moving the gates into omega first and training the plain weights diverged on LeNet-5 cut to
one first-layer channel: 10% accuracy where training the factors on kept 96.6%.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

from dwfc.config import Recipe
from dwfc.engine.schedule import Schedule
from dwfc.errors import InputError
from dwfc.methods.channels import ChannelMethod
from dwfc.methods.dwf import Dwf, cut_cost_warning, lr_scales
from dwfc.structure.gates import channel_gates, gate_, gated_tensors
from dwfc.structure.groups import NORMS, GatedTensor
from dwfc.structure.plan import ChannelPlan

if TYPE_CHECKING:
    from dwfc.engine.outcome import TrainOutcome
    from dwfc.engine.trainer import Trainer


class DGating(ChannelMethod):
    name = "dwf"
    title = "structured DWF (D-Gating)"
    trains = "gates"

    @classmethod
    def prepare(cls, model: nn.Module, selection: Any, recipe: Recipe) -> None:
        gate_(model, selection.removable, recipe.factorize.depth)

    def __init__(self, model: nn.Module, plan: ChannelPlan, recipe: Recipe, schedule: Schedule):
        self.gates = channel_gates(model)
        missing = [g.name for g in plan.removable if g.name not in self.gates]
        if missing:
            raise InputError(f"sparsity.method=dwf with structure.kind=channel trains gates, but "
                             f"group {missing[0]} is not gated: call DGating.prepare (gate_) on "
                             "the model first")  # fmt: skip
        super().__init__(model, plan, recipe, schedule)
        self.depth = recipe.factorize.depth
        tc = recipe.train
        self.scales = lr_scales(self.rms, dict.fromkeys(self.rms, self.depth), tc.lr_scaling,
                                tc.max_lr_scale)  # fmt: skip
        self.weighting = self.penalty_weights(2.0 / self.depth)
        self.ctl = self.make_controller(recipe.structure.lambda_init)
        modules = dict(model.named_modules())
        self.scale_free = {g.name for g in self.groups if any(
            isinstance(modules[gt.param.rpartition(".")[0]], NORMS) for gt in g.gated)}
        self.omegas: dict[str, list[tuple[nn.Parameter, GatedTensor]]] = {
            g.name: [] for g in self.groups
        }
        for owner, pname, param in gated_tensors(model):
            omega = owner.parametrizations[pname].original
            self.omegas[param.gates.group].append((omega, param.gated))

    def param_groups(self) -> list[dict[str, Any]]:
        gated = {g.name: [self.gates[g.name].gates, *(o for o, _ in self.omegas[g.name])]
                 for g in self.groups}  # fmt: skip
        ids = {id(p) for params in gated.values() for p in params}
        groups = [
            {"params": params, "lr_scale": self.scales[name]} for name, params in gated.items()
        ]
        others = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        if others:
            groups.append({"params": others, "lr_scale": 1.0})
        return groups

    def set_masks(self, masks: dict[str, Any] | None, opt: Optimizer | None) -> None:
        super().set_masks(masks, opt)
        for name, gates in self.gates.items():
            mask = None if self.masks is None else self.masks.get(name)
            gates.mask = None if mask is None else mask.to(gates.gates.device)

    def attach(self, opt: Optimizer) -> None:
        opt.register_step_pre_hook(lambda *_: self.decay_grads())

    def before_step(self, trainer: Trainer, step: int, lr: float) -> None:
        for group in trainer.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
            group["weight_decay"] = 0.0  # the decay is `decay_grads`', channel by channel

    def after_step(self, trainer: Trainer, step: int) -> None:
        if step == self.schedule.ramp and not self.final:  # as group_gmp: the rest trains masked
            self._cut(trainer)

    def exempt(self) -> dict[str, torch.Tensor]:
        """The `keeps` largest channels (True) of each group a BatchNorm normalises: never
        removed, so not penalised. Such a group's scale is free (the BatchNorm reads it), and
        a penalty on all its channels shrinks the layer as a whole (ResNetMini48 collapsed to
        10%). Other groups are penalised whole: exempting there makes the exempt channels grow
        and the rest die, down to the minimum (LeNet-5 at 4x: conv1 1 of 6 channels, 94.9%,
        against 2 of 6 and 95.5% penalised whole)."""
        exempt = {}
        for g in self.groups:
            mask = torch.zeros(g.size, dtype=torch.bool)
            if g.name in self.scale_free:  # channel norms only where they are needed
                mask[torch.topk(self.channel_norms(g), g.keeps).indices] = True
            exempt[g.name] = mask
        return exempt

    def decay_grads(self) -> None:
        """SGD's weight decay 2 lambda_g / D, added to the gradients of the omega and gates of
        each channel but the exempt ones (`exempt`)."""
        lam = self.lam
        if lam is None:
            return
        with torch.no_grad():
            for g, keep in self.exempt().items():
                decay = (~keep).float() * (2.0 * lam * self.weighting[g] / self.depth)
                gates = self.gates[g].gates
                if gates.grad is not None:
                    gates.grad.add_(gates * decay.to(gates.device, gates.dtype))
                for omega, gt in self.omegas[g]:
                    if omega.grad is None:
                        continue
                    rows = torch.zeros(omega.shape[gt.dim], dtype=omega.dtype, device=omega.device)
                    rows[list(gt.positions)] = decay[list(gt.channels)].to(
                        omega.device, omega.dtype
                    )
                    omega.grad.add_(omega * gt.along(rows, omega))

    def end_of_sparsify(self, trainer: Trainer) -> None:
        if not self.final:
            self._cut(trainer)

    def _cut(self, trainer: Trainer) -> None:
        self.final_cut(trainer, self.scores())
        trainer.reset_optimizer()  # masked training starts without the penalty's momentum

    def phase(self, step: int) -> str:
        return "sparsify" if step <= self.schedule.ramp else "masked"

    @classmethod
    def summary(cls, recipe: Recipe, outcome: TrainOutcome) -> dict[str, Any]:
        # gates always start balanced from the trained weights (factorize.init does not apply)
        return {**Dwf.summary(recipe, outcome), "init": "balanced", "structure": cls.structure}

    @classmethod
    def warnings(cls, accuracy: dict[str, float]) -> list[str]:
        return cut_cost_warning(accuracy, "D-Gating", "channels", "structure.lambda_init")
