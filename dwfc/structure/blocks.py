"""How many channels a layer keeps at a time, when the recipe leaves `structure.round_to` unset.

onnxruntime's CPU convolutions (MLAS, NCHWc layout) compute output channels in blocks: 16 at a
time with AVX-512, 8 with AVX2. A layer pruned to 24 channels costs there what 32 cost
(benchmarks/ort_blocks.py, docs/results-ort-blocks.md), so the default rounds to this machine's
block. Multiples of 16 are multiples of 8 too: a model rounded for an AVX-512 machine wastes no
block on an AVX2 one.
"""

from __future__ import annotations

import platform

from dwfc.config import Recipe, StructureConfig
from dwfc.export.latency import cpuinfo

AVX512_BLOCK = 16
BLOCK = 8  # AVX2, and the machines whose block dwfc does not know


def channel_block(flags: set[str] | None = None) -> int:
    """Output channels onnxruntime's CPU convolutions compute at once on this machine (or on
    one with the Linux CPU `flags` given)."""
    if flags is None:
        flags = set((cpuinfo("flags") or "").split())
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return AVX512_BLOCK if x86 and "avx512f" in flags else BLOCK


def round_to(structure: StructureConfig) -> int:
    """`structure.round_to`, or this machine's block where it is unset."""
    return structure.round_to if structure.round_to is not None else channel_block()


def with_round_to(recipe: Recipe) -> tuple[Recipe, list[str]]:
    """`recipe` with `structure.round_to` set to this machine's block if it was unset (channel
    runs only), and a note saying so."""
    structure = recipe.structure
    if structure.kind != "channel" or structure.round_to is not None:
        return recipe, []
    block = round_to(structure)
    note = (f"structure.round_to={block}: onnxruntime's CPU convolutions compute {block} output "
            "channels at a time on this machine (set it to override)")  # fmt: skip
    update = {"structure": structure.model_copy(update={"round_to": block})}
    return recipe.model_copy(update=update), [note]
