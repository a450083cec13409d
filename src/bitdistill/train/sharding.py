"""FSDP2 (torch's `fully_shard`) for the training loop: the model sharded per decoder layer, and its weights
and optimizer state gathered into (or scattered from) full state dicts for checkpoints and saved models.

Why bitdistill shards the model itself instead of letting `accelerator.prepare` do it: accelerate 1.15 runs
FSDP only on CUDA (with `distributed_type: FSDP` and the CPU group it silently wraps the model in DDP), so
no CPU test could exercise its path. torch's `fully_shard` runs on CPU over gloo as well as on GPUs over
NCCL, so this one code path is what `configs/accelerate/fsdp.yaml` launches everywhere. The Accelerator
still provides the device, the process group, autocast, backward and clipping (DTensor-aware); it is never
handed the sharded model or its optimizer.

The launch asks for it: `accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP=true and the
FSDP_* variables read by `fsdp_plan` (torchrun users set them by hand). With one process nothing is
sharded (there is nothing to divide).

Every function that gathers or scatters is collective: all ranks call it, in the same order. Full state
dicts live on rank 0 only (on the CPU); the other ranks get `{}`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BitDistillError
from .distributed import rank_and_world

USE_FSDP = "ACCELERATE_USE_FSDP"


@dataclass(frozen=True)
class ShardingPlan:
    """How to shard: accelerate's `fsdp_reshard_after_forward` and `fsdp_offload_params`."""

    reshard_after_forward: bool = True
    offload_params: bool = False


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    return environ.get(name, str(default)).strip().lower() in ("1", "true", "yes")


def fsdp_plan(environ: Mapping[str, str] | None = None) -> ShardingPlan | None:
    """The launch's FSDP settings, or None when the launch did not ask for FSDP."""
    environ = os.environ if environ is None else environ
    if not _flag(environ, USE_FSDP, False):
        return None
    version = environ.get("FSDP_VERSION", "2").strip()
    if version != "2":
        raise BitDistillError(
            f"FSDP_VERSION={version} (fsdp_config.fsdp_version of the accelerate config): bitdistill shards "
            "with FSDP2 only; set fsdp_version: 2 (see configs/accelerate/fsdp.yaml)"
        )
    return ShardingPlan(
        reshard_after_forward=_flag(environ, "FSDP_RESHARD_AFTER_FORWARD", True),
        offload_params=_flag(environ, "FSDP_OFFLOAD_PARAMS", False),
    )


def shards_here(plan: ShardingPlan | None) -> bool:
    """Whether this run shards: FSDP asked for, with more than one process."""
    return plan is not None and rank_and_world()[1] > 1


def shard(model: nn.Module, device: torch.device, plan: ShardingPlan | None = None) -> nn.Module:
    """`model` sharded in place over all processes: one FSDP unit per decoder layer, then the root (the
    embeddings, final norm and LM head, tied or not). Each unit's full weights exist only while it computes
    (all-gathered in its pre-forward hook, so BitLinear ternarizes the whole matrix). Parameters stay
    float32 when gathered: autocast (train.precision) decides the compute dtype, as in one process."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    from ..distill.capture import unwrap
    from ..model.adapters import adapter_for

    plan = plan or ShardingPlan()
    mesh = init_device_mesh(device.type, (rank_and_world()[1],))
    offload = CPUOffloadPolicy() if plan.offload_params and device.type != "cpu" else OffloadPolicy()
    kwargs: dict[str, Any] = dict(mesh=mesh, reshard_after_forward=plan.reshard_after_forward,
                                  offload_policy=offload)  # fmt: skip
    inner = unwrap(model)
    for block in adapter_for(inner).blocks(inner):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gradient_sync_off(model: nn.Module) -> Iterator[None]:
    """Accumulate this micro-step's gradients locally; the last micro-step reduce-scatters them all."""
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


def _tied_names(model: nn.Module) -> dict[str, str]:
    """{dropped name: kept name} for parameters registered under several names (tied embeddings), keeping
    the name safetensors' save_model keeps (the first in sorted order), so both writers agree."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    out = {}
    for group in names.values():
        keep, *dropped = sorted(group)
        out.update({d: keep for d in dropped})
    return out


def _options(**kw: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The sharded model's full weights on rank 0 (CPU, tied duplicates dropped, as save_model writes
    them); `{}` on the other ranks."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_options(cpu_offload=True))
    tied = _tied_names(model)
    return {k: v.contiguous() for k, v in full.items() if k not in tied}


def weights_for_saving(model: nn.Module) -> nn.Module | dict[str, torch.Tensor]:
    """What `model.io.write_weights` writes for `model`: its full weights gathered onto rank 0 when sharded
    (collective), else the module itself."""
    return gather_weights(model) if is_sharded(model) else model


def scatter_weights(model: nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Load the full weights of `path` (a safetensors file) into the sharded model: rank 0 reads the file
    and broadcasts, each rank keeps its shards. Returns (missing, unexpected) names, as load_model does,
    computed on every rank from the file's header so every rank decides alike before the broadcast."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    tied = _tied_names(model)
    expected = {k for k in model.state_dict() if k not in tied}
    with safe_open(str(path), framework="pt") as f:
        stored = set(f.keys())
    missing, unexpected = sorted(expected - stored), sorted(stored - expected)
    if missing or unexpected:
        return missing, unexpected
    state = load_file(str(path)) if rank_and_world()[0] == 0 else {}
    if state:
        state.update({dropped: state[kept] for dropped, kept in tied.items()})
    set_model_state_dict(model, state, options=_options(broadcast_from_rank0=True))
    return [], []


def gather_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The sharded model's full optimizer state, keyed by parameter name, on rank 0; `{}` elsewhere."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def scatter_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load a full optimizer state (written by `gather_optimizer`) into the sharded optimizer: rank 0 reads
    `path` and broadcasts."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state = torch.load(path, weights_only=False) if rank_and_world()[0] == 0 else {}
    set_optimizer_state_dict(model, optimizer, state, options=_options(broadcast_from_rank0=True))


__all__ = [
    "ShardingPlan",
    "fsdp_plan",
    "gather_optimizer",
    "gather_weights",
    "gradient_sync_off",
    "is_sharded",
    "scatter_optimizer",
    "scatter_weights",
    "shard",
    "shards_here",
    "weights_for_saving",
]
