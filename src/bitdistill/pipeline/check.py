"""`bitdistill run --check`: everything that can be known about a recipe before anything trains.

Run by `--check` alone and at the start of every `bitdistill run`. It reads configs, never weights, so it
takes well under a second: a bad distill layer, relation-head count, group size, batch size, number or
path is one line naming the field, instead of an error hours later after the earlier stages trained. It
also compares every stage directory with the recipe's fingerprint (pipeline/state.py) and returns the plan:
one line per stage with its model, steps × batch, learning rate, estimated memory and output directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..config.choices import STAGES
from ..config.recipe import Recipe
from ..errors import BitDistillError, require_finite
from .launch import Launch, launch_from_environment
from .memory import device_lines, stage_estimate, visible_devices
from .modelinfo import ModelShape, model_shape


@dataclass
class StagePlan:
    stage: str
    model: str
    shape: ModelShape | None
    steps: int
    batch: str
    lr: float
    memory_bytes: int | None
    out: Path
    status: str

    def line(self, label: str = "") -> str:
        params = f"{self.shape.parameters() / 1e6:.1f}M params" if self.shape else "size unknown (hub id)"
        mem = f"~{_gb(self.memory_bytes)} per device" if self.memory_bytes else "memory unknown"
        name = f"{label}{self.stage}"
        return (f"  {name:<20} {self.model} ({params}); {self.steps} steps x {self.batch}, lr {self.lr:g}; "
                f"{mem} -> {self.out} [{self.status}]")  # fmt: skip


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


# -- values ---------------------------------------------------------------------------------------------


def check_values(recipe: Recipe) -> None:
    """Numbers and names the schema's types accept but no run can use (NaN, negative weights, 0 sizes)."""
    src = recipe.source
    name = recipe.name
    if not name or "/" in name or "\\" in name or ".." in name or name.startswith(".") or "\0" in name:
        raise BitDistillError(
            f"{src}: name: {name!r} must be a plain directory name (no '/', '\\', '..' or leading '.'): the "
            "run is written to runs/<name>; use output_dir to put it elsewhere"
        )
    d = recipe.distill
    require_finite(d.temperature, f"{src}: distill.temperature", strict=True)
    require_finite(d.lambda_logits, f"{src}: distill.lambda_logits")
    require_finite(d.gamma_attention, f"{src}: distill.gamma_attention")
    t = recipe.task
    for key in ("eval_batch_size", "max_new_tokens", "num_beams"):
        if getattr(t, key) < 1:
            raise BitDistillError(f"{src}: task.{key}: must be >= 1, got {getattr(t, key)}")
    for key in ("train_limit", "eval_limit"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            raise BitDistillError(f"{src}: task.{key}: must be >= 1 or null (all rows), got {getattr(t, key)}")
    if t.generate_limit is not None and t.generate_limit < 0:
        raise BitDistillError(f"{src}: task.generate_limit: must be >= 0 or null, got {t.generate_limit}")
    if recipe.bitnet.group_size < 1:
        raise BitDistillError(f"{src}: bitnet.group_size: must be >= 1, got {recipe.bitnet.group_size}")
    for stage in STAGES:
        if getattr(recipe, stage).enabled:
            _check_train(recipe, stage)


def _check_train(recipe: Recipe, stage: str) -> None:
    cfg = recipe.train_config(stage)  # TrainConfig.validate checks each field's range
    where = f"{recipe.source}: {stage}.train"
    # The loop uses warmup_steps when it is > 0 and warmup_ratio otherwise. A stage's warmup_steps over the
    # recipe's warmup_ratio is an override that works (the paper configs do this); both in one section, or
    # a stage's ratio under the recipe's steps, would be silently ignored.
    for label, section in (("train", recipe.train), (f"{stage}.train", getattr(recipe, stage).train)):
        if _positive(section.get("warmup_steps")) and _positive(section.get("warmup_ratio")):
            raise BitDistillError(
                f"{recipe.source}: {label}: warmup_steps ({section['warmup_steps']}) and warmup_ratio "
                f"({section['warmup_ratio']}) are both set; set one of them"
            )
    own = getattr(recipe, stage).train
    if _positive(own.get("warmup_ratio")) and "warmup_steps" not in own and cfg.warmup_steps > 0:
        raise BitDistillError(
            f"{where}.warmup_ratio: ignored, since train.warmup_steps ({cfg.warmup_steps}) takes precedence; "
            f"also set {stage}.train.warmup_steps: 0"
        )


def _positive(value: object) -> bool:
    try:
        return float(value) > 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


# -- models, data -----------------------------------------------------------------------------------------


class _Shapes:
    """model_shape per spec, read once per check."""

    def __init__(self) -> None:
        self.cache: dict[str, ModelShape | None] = {}

    def __call__(self, spec: str, where: str) -> ModelShape | None:
        if spec not in self.cache:
            self.cache[spec] = model_shape(spec, where)
        return self.cache[spec]


def _produced_by(recipe: Recipe, path: str) -> str | None:
    """The enabled stage of this run whose directory will hold `path` (a model not written yet)."""
    p = Path(path).expanduser().absolute()
    for stage in STAGES:
        if getattr(recipe, stage).enabled and p.is_relative_to(recipe.stage_dir(stage).absolute()):
            return stage
    return None


def stage_model(recipe: Recipe, stage: str) -> str:
    """The model spec a stage starts from (for distill: the student's base)."""
    if stage == "teacher":
        return recipe.teacher.path or recipe.teacher.model or recipe.model
    if stage != "distill":
        return recipe.model
    student = recipe.distill.student
    if student == "teacher":
        return stage_model(recipe, "teacher")
    return recipe.model if student == "auto" else student


def _shape_of(recipe: Recipe, spec: str, where: str, shapes: _Shapes) -> ModelShape | None:
    if spec in (recipe.model, recipe.teacher.model, recipe.teacher.path):
        return shapes(spec, where)
    produced = _produced_by(recipe, spec)
    if produced is not None and not Path(spec).exists():
        return shapes(stage_model(recipe, produced), where)
    return shapes(spec, where)


def _teacher_spec(recipe: Recipe) -> str:
    d = recipe.distill
    if d.teacher != "auto":
        return d.teacher
    if recipe.teacher.enabled:
        return stage_model(recipe, "teacher")
    from .markers import read_stage

    record = read_stage(recipe.stage_dir("teacher"))
    if record is None:
        raise BitDistillError(
            f"{recipe.source}: distill.teacher: auto takes the teacher stage's output, but that stage is "
            f"disabled and has not finished under {recipe.stage_dir('teacher')}; enable it or set "
            "distill.teacher to a model directory"
        )
    return str(record["model_dir"])


def _check_layer(shape: ModelShape | None, layer: int, where: str) -> None:
    if shape is not None and not -shape.layers <= layer < shape.layers:
        raise BitDistillError(
            f"{where}: layer {layer} does not exist: {shape.where} has {shape.layers} decoder layers "
            f"(use 0..{shape.layers - 1}, or -1 for the last)"
        )


def _check_distill(recipe: Recipe, shapes: _Shapes) -> tuple[ModelShape | None, ModelShape | None]:
    d, src = recipe.distill, recipe.source
    student = _shape_of(recipe, stage_model(recipe, "distill"), f"{src}: distill.student", shapes)
    teacher = _shape_of(recipe, _teacher_spec(recipe), f"{src}: distill.teacher", shapes)
    gamma = d.weights("classification")[1] if d.gamma_attention is None else d.gamma_attention
    if not d.attention or gamma == 0:
        return student, teacher
    if d.student_layer != "auto":
        _check_layer(student, int(d.student_layer), f"{src}: distill.student_layer")
        _check_layer(teacher, d.teacher_layer, f"{src}: distill.teacher_layer")
    if d.relation_heads is not None:
        for who, shape in (("student", student), ("teacher", teacher)):
            if shape is None:
                continue
            bad = [w for w in shape.qkv_widths if w % d.relation_heads]
            if bad:
                raise BitDistillError(
                    f"{src}: distill.relation_heads: {d.relation_heads} does not divide the {who}'s q/k/v "
                    f"widths {'/'.join(map(str, shape.qkv_widths))} ({shape.where}); choose a divisor of "
                    "every width of both models, or null for the largest one <= 32"
                )
    return student, teacher


def _check_group(recipe: Recipe, shape: ModelShape | None, stage: str) -> None:
    b = recipe.bitnet
    if b.granularity != "group" or shape is None:
        return
    bad = {name: n for name, n in shape.linear_inputs().items() if n % b.group_size}
    if bad:
        name, n = next(iter(bad.items()))
        raise BitDistillError(
            f"{recipe.source}: bitnet.group_size: {b.group_size} does not divide the input width of "
            f"{name} ({n}) in {shape.where}, which {stage} converts; choose a group size that divides every "
            f"linear's input width ({', '.join(sorted({str(v) for v in shape.linear_inputs().values()}))})"
        )


def _check_data(recipe: Recipe, stages: list[str], evaluate: bool) -> None:
    from ..data.tasks import get_task

    src, spec = recipe.source, recipe.task
    try:
        task = get_task(spec.name, **spec.options)
    except BitDistillError as err:
        raise BitDistillError(f"{src}: task: {err}") from None
    splits = {"train"} if any(s != "continue_pretrain" for s in stages) else set()
    if evaluate or any(
        recipe.train_config(s).eval_every or recipe.train_config(s).select == "best" for s in stages
    ):
        splits.add(spec.eval_split)
    if spec.path is not None:
        for split in sorted(splits):
            try:
                task.split_file(spec.path, split)
            except BitDistillError as err:
                raise BitDistillError(f"{src}: task.path: {err}") from None
    if "continue_pretrain" in stages:
        from ..data.corpus import expand_sources

        files = [s for s in recipe.continue_pretrain.corpus.sources if not s.startswith("task:")]
        try:
            expand_sources(files)
        except BitDistillError as err:
            raise BitDistillError(f"{src}: continue_pretrain.corpus.sources: {err}") from None
        if any(s.startswith("task:") for s in recipe.continue_pretrain.corpus.sources) and spec.path:
            task.split_file(spec.path, "train")


# -- the plan ----------------------------------------------------------------------------------------------


def _steps(recipe: Recipe, stage: str, processes: int) -> tuple[int, str]:
    cfg = recipe.train_config(stage)
    batch = f"{cfg.batch_size}" + (f" (x{cfg.grad_accum} accum)" if cfg.grad_accum > 1 else "")
    each = f" x {processes} processes" if processes > 1 else ""
    if stage != "continue_pretrain":
        return cfg.steps, batch + each
    corpus = recipe.continue_pretrain.corpus
    # As stages/pretrain.py: the token budget over the global batch of every process.
    per_step = cfg.batch_size * cfg.grad_accum * processes * corpus.block_size
    budget = max(1, math.ceil(corpus.tokens / per_step))
    steps = cfg.steps if "steps" in {**recipe.train, **recipe.continue_pretrain.train} else budget
    return min(steps, budget), f"{batch} blocks of {corpus.block_size}{each}"


def _status(state) -> str:
    return {"new": "new", "done": "done, skipped", "resume": f"resume from step {state.step}"}.get(
        state.status, state.status
    )


def check_recipe(
    recipe: Recipe,
    only: list[str] | None = None,
    restart: tuple[str, ...] = (),
    variants: dict[str, Recipe] | None = None,
    restart_flag: str | None = None,
    hint: str | None = None,
    launch: Launch | None = None,
) -> list[str]:
    """Validate `recipe` for a run of `only` (None: everything) after `--restart` of `restart`; return the
    plan's lines. Raises BitDistillError (one line) at the first problem. Writes nothing.

    `variants` are the ablation rows (checked too, their own stages in the plan); `restart_flag` is what a
    refusal advises passing to --restart (default: the refused stages); `hint` replaces that advice.
    `launch` is the launch the memory plan assumes (default: this process's, launch_from_environment)."""
    from .state import refusal, restart_hint

    launch = launch or launch_from_environment()
    refused: list = []  # (state, the --restart name that clears it)
    lines = [f"plan for {recipe.out} ({recipe.source}):", f"  launch: {launch.describe()}"]
    lines += [line for _, line in _check(recipe, only, restart, restart_flag, refused, launch)]
    for label, variant in (variants or {}).items():
        sub = _check(variant, None, STAGES if "ablations" in restart else (), "ablations", refused, launch)
        own = [line for out, line in sub if out is None or out.is_relative_to(variant.out)]
        lines += [f"  ablation {label!r}:", *("  " + line for line in own)]
    if refused:
        # One refusal names every flag needed, so the user does not meet them one run at a time.
        flags = list(dict.fromkeys(flag for _, flag in refused))
        raise refusal(refused[0][0], hint or restart_hint(flags))
    return lines


def _check(
    recipe: Recipe,
    only: list[str] | None,
    restart: tuple[str, ...],
    restart_flag: str | None,
    refused: list,
    launch: Launch,
) -> list[tuple[Path | None, str]]:
    """(stage directory or None, plan line) per stage after every check of `recipe`; stage directories
    the recipe no longer matches are appended to `refused` with the --restart name that clears them."""
    from .state import stage_state

    check_values(recipe)
    stages = [s for s in STAGES if getattr(recipe, s).enabled and (not only or s in only)]
    evaluate = recipe.eval.enabled and (not only or "eval" in only)
    _check_data(recipe, stages, evaluate)
    shapes = _Shapes()
    teacher_shape = None
    shape_by_stage: dict[str, ModelShape | None] = {}
    for stage in stages:
        field = "teacher.path" if recipe.teacher.path else "teacher.model" if recipe.teacher.model else "model"
        where = f"{recipe.source}: {field if stage == 'teacher' else 'model'}"
        if stage == "distill":
            shape_by_stage[stage], teacher_shape = _check_distill(recipe, shapes)
        else:
            shape_by_stage[stage] = shapes(stage_model(recipe, stage), where)
        converts = stage in ("bitnet_sft", "continue_pretrain") or (
            stage == "distill" and (recipe.distill.student == "teacher" or (
                recipe.distill.student == "auto" and not recipe.continue_pretrain.enabled))
        )  # fmt: skip
        if converts:
            _check_group(recipe, shape_by_stage[stage], stage)

    # Every stage this invocation runs, reads (distill: teacher and stage 2) or evaluates must match.
    used = set(stages)
    if "distill" in used:
        used |= {"teacher", "continue_pretrain"}
    if evaluate:
        used |= set(recipe.eval.stages)
    states = {s: stage_state(recipe, s) for s in STAGES if getattr(recipe, s).enabled and s in used}
    refused += [(st, restart_flag or s) for s, st in states.items() if st.refused and s not in restart]

    lines: list[tuple[Path | None, str]] = []
    peaks: dict[str, int] = {}
    for stage in stages:
        out = recipe.stage_dir(stage)
        status = "restart" if stage in restart else _status(states[stage])
        if stage == "teacher" and recipe.teacher.path:
            lines.append((out, f"  {'teacher':<20} {recipe.teacher.path} (ready, evaluated only) -> {out} [{status}]"))
            continue
        shape = shape_by_stage[stage]
        steps, batch = _steps(recipe, stage, launch.processes)
        estimate = stage_estimate(recipe, stage, shape, teacher_shape, launch)
        mem = estimate.peak if estimate else None
        model = stage_model(recipe, stage)
        if stage == "distill":
            teacher = "teacher stage output" if recipe.distill.teacher == "auto" else recipe.distill.teacher
            model = f"student {_student_name(recipe)}, teacher {teacher}"
        lr = recipe.train_config(stage).lr
        lines.append((out, StagePlan(stage, model, shape, steps, batch, lr, mem, out, status).line()))
        if estimate:
            peaks[stage] = estimate.peak
            lines.append((out, f"    memory per device ({stage}): {estimate.describe()}"))
    if evaluate:
        t = recipe.task
        limit = f", first {t.eval_limit} rows" if t.eval_limit else ""
        lines.append((None, f"  {'eval':<20} {', '.join(recipe.eval.stages)} on {t.name} {t.eval_split}{limit}, "
                            f"batch {t.eval_batch_size} -> {recipe.out / 'results.json'}"))  # fmt: skip
    if peaks:
        lines += [(None, line) for line in device_lines(peaks, visible_devices(), launch)]
    return lines


def _student_name(recipe: Recipe) -> str:
    s = recipe.distill.student
    if s == "auto":
        return "continue_pretrain output" if recipe.continue_pretrain.enabled else f"{recipe.model} converted"
    return "teacher output converted" if s == "teacher" else s


__all__ = ["StagePlan", "check_recipe", "check_values", "stage_model"]
