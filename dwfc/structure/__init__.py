"""Structured DWF's wing: channel groups, gates, MACs, the cut and the physical removal.

    plan = plan_channels(model, example)        # groups (Torch-Pruning), MACs, max speed-up
    gate_(model, plan.removable, depth=3)       # w_c = omega_c * gamma_c1 * ... (balanced)
    ...train (dwfc.methods.gating.DGating)...
    fold_gates_(model)                          # or dwfc.collapse_
    spec = remove_(model, removed, example)     # physically smaller; spec rebuilds it
    model = load_pruned("runs/x/model.safetensors")
"""

from dwfc.structure.gates import channel_gates, fold_gates_, gate_
from dwfc.structure.macs import count_macs
from dwfc.structure.plan import ChannelPlan, check_target, plan_channels
from dwfc.structure.prune import PRUNED_KEY, PrunedSpec, load_pruned, rebuild_, remove_

__all__ = ["PRUNED_KEY", "ChannelPlan", "PrunedSpec", "channel_gates", "check_target",
           "count_macs", "fold_gates_", "gate_", "load_pruned", "plan_channels", "rebuild_",
           "remove_"]  # fmt: skip
