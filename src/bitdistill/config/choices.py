"""The allowed values of every enumerated option, torch-free so a recipe or the CLI can check them early.

The modules that act on a value (quant/, model/convert.py, distill/) import its list from here, so a
recipe check and the code that runs never disagree about what is valid.
"""

from __future__ import annotations

from typing import Literal

from ..errors import BitDistillError

# The pipeline's stages, in the order a run executes them.
STAGES = ("teacher", "bitnet_sft", "continue_pretrain", "distill")

Granularity = Literal["tensor", "channel", "group"]
GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "group")  # weight-scale granularities

# Where the extra RMSNorms go: the paper's SubLN ("o_down"), the authors' code's "allnorm" ("all": one
# before every BitLinear, microsoft/BitNet PR #382 `standard_bitnet=False`), or none.
SUBLN_MODES = ("o_down", "all", "none")

QKV_SOURCES = ("attention", "projection")  # Q/K/V after q/k-norm and RoPE, or the projection outputs
KD_POSITIONS = ("all", "targets")  # logits distillation over every non-pad token, or target tokens only
RELATIONS = ("cosine", "scaled")  # attention-relation form (see distill/losses.py)
TEACHER_DTYPES = ("float32", "bfloat16")  # the frozen distill teacher's weights
TEACHER_SHARDINGS = ("replicated", "sharded")  # a whole teacher per process, or 1/N of it (FSDP2)


def subln_mode(value: bool | str | None, where: str = "subln") -> str:
    """The SubLN mode of a setting: a mode name, or the older booleans (True = o_down, False = none)."""
    if value is True or value is None:
        return "o_down"
    if value is False:
        return "none"
    if isinstance(value, str) and value in SUBLN_MODES:
        return value
    raise BitDistillError(f"{where}: {value!r} is not one of {', '.join(SUBLN_MODES)} (or true/false)")
