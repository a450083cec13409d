"""Peak memory per device of each training stage, estimated from the model's config before anything loads.

`bitdistill run CONFIG --check` prints, per stage and per device, for the launch it plans (pipeline/launch.py:
one process, N data-parallel processes that each hold all of this, or N FSDP2 processes); the batch is per
process:

    weights      the trained model, float32 (models load in float32; mixed precision autocasts per op)
    grads        one float32 gradient per trainable parameter
    optimizer    AdamW's two float32 moments per trainable parameter
    activations  what autograd keeps for the backward pass at the configured batch x length (see below)
    teacher      the frozen distill teacher's weights (distill.teacher_dtype; no gradients, no optimizer)

Activations, counted in float32 elements per token (4 bytes each whatever the precision: under bf16
autocast the norms, rotary and losses stay float32 and the measured saving is only 20-40%, so for bf16 the
figure is an upper bound):
  per decoder layer  FP: 5h (RMSNorms' inputs and outputs) + q+k+v (projections) + 2(q+k) (q/k norms and
                     rotary; q+k where the model has no q/k norm) + 2q (attention output, o_proj input)
                     + 4I (gate, up, act(gate), their product).
                     BitNet: the quantized input each BitLinear saves replaces some of those (+3h + q);
                     SubLN "o_down" adds the norms before o_proj and down_proj (+q + 2I), "all" also those
                     before q/k/v and gate/up (+7h).
  logits             2V: the float32 logits and their log-softmax for the cross-entropy.
  distill            3V more (teacher logits, tempered softmaxes for the KL) and, for attention-relation
                     KD, 9·R·L per token (Q, K, V × teacher and student relation log-probs and the KL; R
                     relation heads over L keys).
BitNet also keeps each BitLinear's fake-quantized weight for the backward: one more copy of every linear
weight in the compute dtype. SDPA attention is assumed to keep no L×L matrix (flash / memory-efficient
kernels on GPUs). tests/test_memory_plan.py checks these counts against autograd's saved tensors.

Under FSDP2 (train/sharding.py: one unit per decoder layer, plus the root: embeddings, final norm, LM head)
each process keeps 1/N of the weights, gradients and AdamW state, and the unit computing is gathered whole in
float32, its gradient whole until reduce-scattered: the largest unit is added to weights and to grads
(every unit, with fsdp_reshard_after_forward: false; offloaded shards, fsdp_offload_params, are on the CPU).
Activations (BitLinear's weight copies included: each layer's is made from its gathered weight) do not
shrink. A teacher sharded (distill.teacher_sharding, any launch of N > 1) is 1/N plus its largest unit.
Before sharding, every process moves the whole float32 model to its device (the stages do, then the loop
shards), after the distill teacher is placed: that load is reported when it exceeds the training peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.recipe import Recipe
from .launch import ONE_PROCESS, Launch
from .modelinfo import ModelShape

FP32 = 4
ADAM_MOMENTS = 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one training stage; `teacher` is 0 outside distillation. Under FSDP `weights`
    and `grads` include `gathered` and `gathered_grads` (what is whole at once); `load` is the peak while
    the models load, before sharding."""

    weights: int
    grads: int
    optimizer: int
    activations: int
    teacher: int = 0
    gathered: int = 0
    gathered_grads: int = 0
    load: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.teacher

    @property
    def peak(self) -> int:
        return max(self.total, self.load)

    def describe(self) -> str:
        parts = [f"weights {gib(self.weights)}", f"grads {gib(self.grads)}", f"AdamW {gib(self.optimizer)}",
                 f"activations {gib(self.activations)}"]  # fmt: skip
        if self.teacher:
            parts.append(f"teacher {gib(self.teacher)}")
        out = " + ".join(parts) + f" = {gib(self.total)}"
        if self.gathered:
            out += (f" (FSDP: 1/N each, plus {gib(self.gathered)} of weights and {gib(self.gathered_grads)} of "
                    "grads whole at once)")  # fmt: skip
        if self.load > self.total:
            out += (f"; loading peaks higher, at {gib(self.load)}: every process holds the whole float32 model "
                    "before sharding")  # fmt: skip
        return out


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def compute_bytes(precision: str) -> int:
    """Bytes per element of the compute dtype: 2 under bf16/fp16 autocast, 4 in float32. A planner
    assumes GPUs, so "auto" is bf16 (what the loop picks on a GPU that computes it natively)."""
    return FP32 if precision == "fp32" else 2


def linear_parameters(shape: ModelShape) -> int:
    """Parameters of the decoder blocks' linears (what BitLinear quantizes), all layers."""
    q, k, v = shape.qkv_widths
    per_layer = shape.hidden * (q + k + v) + q * shape.hidden + 3 * shape.hidden * shape.intermediate
    return shape.layers * per_layer


def layer_activation_elements(shape: ModelShape, bitnet: bool, subln: str) -> int:
    """Elements autograd keeps per token per decoder layer (see the module docstring)."""
    h, inter = shape.hidden, shape.intermediate
    q, k, v = shape.qkv_widths
    qk_norm = shape.model_type in ("qwen3", "gemma3_text")
    n = 5 * h + (q + k + v) + (2 if qk_norm else 1) * (q + k) + 2 * q + 4 * inter
    if bitnet:
        n += 3 * h + q
        if subln in ("o_down", "all"):
            n += q + 2 * inter
        if subln == "all":
            n += 7 * h
    return n


def activation_bytes(
    shape: ModelShape,
    batch: int,
    length: int,
    precision: str,
    bitnet: bool,
    subln: str = "none",
    distill: bool = False,
    relation_heads: int = 0,
) -> int:
    """Bytes autograd keeps for one micro-batch of `batch` sequences of `length` tokens."""
    tokens = batch * length
    per_token = shape.layers * layer_activation_elements(shape, bitnet, subln) + 2 * shape.vocab
    if distill:
        per_token += 3 * shape.vocab + 9 * relation_heads * length
    weights = linear_parameters(shape) * compute_bytes(precision) if bitnet else 0
    return tokens * per_token * FP32 + weights


def largest_unit(shape: ModelShape) -> int:
    """Parameters of the largest FSDP unit: a decoder layer or the root (train/sharding.py's wrapping)."""
    return max(shape.layer_parameters(), shape.root_parameters())


def _per_process(n_bytes: int, processes: int) -> int:
    return -(-n_bytes // processes)  # FSDP pads each shard up, so round up


def stage_memory(
    shape: ModelShape,
    activations: int,
    teacher: ModelShape | None = None,
    teacher_bytes: int = FP32,
    launch: Launch = ONE_PROCESS,
    teacher_sharded: bool = False,
) -> MemoryEstimate:
    """The per-device estimate of a stage training `shape` with `activations` bytes (`activation_bytes`)
    and, for distill, holding `teacher` at `teacher_bytes` per parameter (`teacher_sharded`: over the
    launch's processes), under `launch` (see the module docstring)."""
    params = shape.parameters()
    full = params * FP32
    weights, grads, optimizer, gathered, gathered_grads = full, full, full * ADAM_MOMENTS, 0, 0
    if launch.shards:
        kept = 0 if launch.offload_params else 1
        unit = largest_unit(shape) * FP32
        # Without resharding after forward, every unit stays gathered from its forward to its backward.
        gathered, gathered_grads = (unit if launch.reshard_after_forward else full), unit
        weights = kept * _per_process(full, launch.processes) + gathered
        grads = kept * _per_process(full, launch.processes) + gathered_grads
        optimizer = kept * _per_process(full * ADAM_MOMENTS, launch.processes)
    held = whole = 0
    if teacher is not None:
        whole = held = teacher.parameters() * teacher_bytes
        if teacher_sharded and launch.processes > 1:
            held = _per_process(whole, launch.processes) + largest_unit(teacher) * teacher_bytes
    return MemoryEstimate(
        weights=weights,
        grads=grads,  # the computing unit's whole until reduce-scattered
        optimizer=optimizer,
        activations=activations,
        teacher=held,
        gathered=gathered,
        gathered_grads=gathered_grads,
        # The teacher is placed (whole, then sharded), then the whole student moves to the device.
        load=max(whole, held + full),
    )


def stage_estimate(
    recipe: Recipe,
    stage: str,
    shape: ModelShape | None,
    teacher: ModelShape | None,
    launch: Launch = ONE_PROCESS,
) -> MemoryEstimate | None:
    """`stage_memory` with the recipe's settings for `stage` under `launch` (None when a model's shape is
    unknown)."""
    if shape is None or (stage == "distill" and teacher is None):
        return None
    from ..config.choices import subln_mode
    from ..distill.losses import default_relation_heads

    cfg = recipe.train_config(stage)
    length = (
        recipe.continue_pretrain.corpus.block_size if stage == "continue_pretrain" else recipe.task.max_length
    )
    heads = 0
    d = recipe.distill
    if stage == "distill" and d.attention and (d.gamma_attention is None or d.gamma_attention > 0):
        heads = d.relation_heads or default_relation_heads([*shape.qkv_widths, *teacher.qkv_widths])
    distill = stage == "distill"
    activations = activation_bytes(
        shape, cfg.batch_size, length, cfg.precision, bitnet=stage != "teacher",
        subln=subln_mode(recipe.bitnet.subln, "bitnet.subln"), distill=distill, relation_heads=heads,
    )  # fmt: skip
    teacher_bytes = 2 if d.teacher_dtype == "bfloat16" else FP32
    sharded = d.teacher_sharding == "sharded"
    return stage_memory(shape, activations, teacher if distill else None, teacher_bytes, launch, sharded)


@dataclass(frozen=True)
class Device:
    name: str
    bytes: int


def visible_devices() -> list[Device]:
    """The CUDA devices this process sees (empty without CUDA); never initializes more than torch does."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(Device(f"cuda:{i} {props.name}", int(props.total_memory)))
    return out


def device_lines(peaks: dict[str, int], devices: list[Device], launch: Launch = ONE_PROCESS) -> list[str]:
    """The plan's closing lines: what devices are visible, and a warning per stage that does not fit."""
    if not devices:
        return ["  devices: no CUDA device visible; memory is per GPU of the launch above"]
    smallest = min(devices, key=lambda d: d.bytes)
    lines = [f"  devices: {len(devices)} visible, smallest {smallest.name} with {gib(smallest.bytes)}"]
    more = "more GPUs" if launch.shards else "FSDP over several GPUs (configs/accelerate/fsdp.yaml)"
    for stage, peak in peaks.items():
        if peak > smallest.bytes:
            lines.append(
                f"  warning: {stage} needs ~{gib(peak)} per device, more than the {gib(smallest.bytes)} of "
                f"{smallest.name}; lower its train.batch_size (raise grad_accum to keep the global batch) "
                f"or task.max_length, or use {more} or GPUs with more memory"
            )
    return lines


__all__ = [
    "Device",
    "MemoryEstimate",
    "activation_bytes",
    "device_lines",
    "gib",
    "largest_unit",
    "stage_estimate",
    "stage_memory",
    "visible_devices",
]
