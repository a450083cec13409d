"""The pipeline's stages; each reads a checkpoint directory (or a base model) and writes one."""

from .distill import run_distill
from .pretrain import run_continue_pretrain
from .sft import run_bitnet_sft, run_teacher

RUNNERS = {
    "teacher": run_teacher,
    "bitnet_sft": run_bitnet_sft,
    "continue_pretrain": run_continue_pretrain,
    "distill": run_distill,
}

__all__ = ["RUNNERS", "run_bitnet_sft", "run_continue_pretrain", "run_distill", "run_teacher"]
