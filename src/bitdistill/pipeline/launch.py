"""The launch a memory plan assumes: how many processes, and whether they shard the trained model (FSDP2).

Under `accelerate launch` (or torchrun) the plan reads what the training loop will act on: the world size
(`train.distributed.launched_world_size`) and the FSDP settings (`train.sharding.fsdp_plan`), so the plan
printed at the start of a run describes that run. For planning ahead on a machine without the GPUs,
`bitdistill run CONFIG --check --num-processes 8 --fsdp` states them instead; each flag replaces only its own
part of the environment's launch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import BitDistillError

# More processes than this is a typo, not a cluster a recipe here would use (and /N of a model is ~0).
MAX_PROCESSES = 65536


@dataclass(frozen=True)
class Launch:
    """`processes` of one run; `fsdp`: the trained model is sharded (with more than one process). The two
    FSDP options are those of configs/accelerate/fsdp.yaml, which `--fsdp` assumes."""

    processes: int = 1
    fsdp: bool = False
    reshard_after_forward: bool = True
    offload_params: bool = False
    source: str = ""  # where the plan learnt it, for its header

    @property
    def shards(self) -> bool:
        """Whether the trained model is sharded: FSDP asked for, with more than one process (as in
        train.sharding.shards_here)."""
        return self.fsdp and self.processes > 1

    def describe(self) -> str:
        if self.shards:
            how = f"FSDP2 sharded over {self.processes} processes"
            opts = [o for o, on in (("fsdp_reshard_after_forward: false", not self.reshard_after_forward),
                                    ("fsdp_offload_params: true", self.offload_params)) if on]  # fmt: skip
            how += f" ({', '.join(opts)})" if opts else ""
        elif self.processes > 1:
            how = f"data parallel (DDP, replicated) over {self.processes} processes"
        else:
            how = "one process"
        return f"{how}; from {self.source}" if self.source else how


ONE_PROCESS = Launch()


def launch_from_environment() -> Launch:
    """The launch this process is part of (one process when not launched by accelerate/torchrun)."""
    from ..train.distributed import launched_world_size
    from ..train.sharding import fsdp_plan

    world = launched_world_size()
    plan = fsdp_plan()  # raises the loop's own one-line error for fsdp_version 1
    launched = world > 1 or plan is not None
    source = "the accelerate launch environment" if launched else "no accelerate/torchrun launch"
    if plan is None:
        return Launch(processes=world, source=source)
    return Launch(world, True, plan.reshard_after_forward, plan.offload_params, source)


def planned_launch(num_processes: object = None, fsdp: bool = False) -> Launch:
    """The launch to plan for: `--num-processes` and `--fsdp` over the environment's launch; bad values are
    one-line errors naming the flag."""
    launch = launch_from_environment()
    flags = []
    if num_processes is not None:
        launch = replace(launch, processes=_processes(num_processes))
        flags.append("--num-processes")
    if fsdp:
        launch = replace(launch, fsdp=True)
        flags.append("--fsdp")
        if launch.processes < 2:
            raise BitDistillError(
                f"--fsdp: FSDP shards over the processes and this plan has {launch.processes}; add "
                "--num-processes N (N >= 2, the number of GPUs)"
            )
    if flags:
        launch = replace(launch, source=" and ".join(flags))
    return launch


def _processes(value: object) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise BitDistillError(
            f"--num-processes={value!r}: not a whole number; give the number of processes (GPUs) to plan for"
        ) from None
    if not 1 <= n <= MAX_PROCESSES:
        raise BitDistillError(
            f"--num-processes={n}: must be from 1 to {MAX_PROCESSES}; give the number of processes (GPUs) "
            "to plan for"
        )
    return n


__all__ = ["ONE_PROCESS", "Launch", "launch_from_environment", "planned_launch"]
