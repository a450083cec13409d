"""The recipe schema: one YAML file = one reproducible BitDistill run.

Every knob of every stage lives here as a dataclass field with a default. `parse_recipe` turns a YAML
mapping into these dataclasses and rejects anything it does not understand with an error that names the
file and the field (`configs/x.yaml: distill.temperature: expected a number, got 'hot'`), and suggests the
closest known field for typos. Relative paths are resolved against the directory the command runs in.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import BitDistillError
from .bitnet import BitNetConfig
from .choices import (
    GRANULARITIES,
    KD_POSITIONS,
    QKV_SOURCES,
    RELATIONS,
    STAGES,
    TEACHER_DTYPES,
    TEACHER_SHARDINGS,
    subln_mode,
)
from .train import TrainConfig

# Paper defaults (BitNet Distillation, arXiv 2510.13998) per task kind: (lambda, gamma).
PAPER_WEIGHTS = {"classification": (10.0, 1e5), "summarization": (1.0, 1e3)}


@dataclass
class TaskSpec:
    name: str = "sst2"
    path: str | None = None  # local data (a directory of {train,dev}.tsv/.jsonl/.csv/.parquet or a file)
    options: dict[str, Any] = field(default_factory=dict)  # extra task options (custom columns, template)
    max_length: int = 128  # tokens per training example (prompt truncated, target kept)
    train_limit: int | None = None  # use the first N training rows
    eval_split: str = "dev"
    eval_limit: int | None = None  # evaluate on the first N rows of eval_split (None = all)
    eval_batch_size: int = 32
    # Summarization: ROUGE/BLEU of generated summaries for the first N eval rows (None = all, 0 = loss only)
    generate_limit: int | None = None
    max_new_tokens: int = 128
    num_beams: int = 1


@dataclass(frozen=True)
class BitNetSpec(BitNetConfig):
    """A recipe's stage-1 conversion: a BitNetConfig whose SubLN default is the authors' code's ("all": an
    RMSNorm before every BitLinear) rather than the paper's o_down."""

    subln: bool | str = "all"


@dataclass
class TeacherStage:
    enabled: bool = True
    model: str | None = None  # the teacher's base model (default: the recipe's model); may be larger
    path: str | None = None  # an already fine-tuned teacher directory: evaluated and used, not trained
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTStage:
    enabled: bool = True
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class CorpusSpec:
    sources: list[str] = field(default_factory=list)  # text files / directories / hub ids
    block_size: int = 512
    tokens: int = 1_000_000  # token budget; accepts 2M, 500k, 1e6


@dataclass
class PretrainStage:
    enabled: bool = True
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillStage:
    enabled: bool = True
    # The student: "auto" = the continue_pretrain output when that stage is enabled, else the recipe's
    # model converted to BitNet (the "no continued pre-training" ablation); "teacher" = the teacher stage's
    # output converted to BitNet (no stage 2; beyond the paper); or a model directory.
    student: str = "auto"
    teacher: str = "auto"  # "auto" = the teacher stage's output; or a model directory
    ce: bool = True  # the task cross-entropy term
    logits: bool = True  # L_LD: logits distillation (ablation: false = AD only)
    attention: bool = True  # L_AD: attention-relation distillation (ablation: false = LD only)
    temperature: float = 5.0
    lambda_logits: float | None = None  # None = paper default for the task kind (10 / 1)
    gamma_attention: float | None = None  # None = paper default for the task kind (1e5 / 1e3)
    # negative counts from the end; "auto" = the layer-selection criterion picks student and teacher layer
    # before training (distill/layer_choice.py: the largest relation divergence at initialisation)
    student_layer: int | str = -1
    teacher_layer: int = -1
    relation_heads: int | None = None  # A_r; None = the largest divisor of every q/k/v width <= 32 (authors)
    kd_positions: str = "all"  # L_LD over every non-pad token (authors' code) | targets: target positions only
    relation: str = "cosine"  # L_AD relations: cosine (authors' code) | scaled (softmax(XXᵀ/√d), masked)
    qkv_source: str = "attention"  # Q/K after q/k-norm and RoPE (authors' code) | projection outputs
    # The frozen teacher's weights: float32 as loaded, or bfloat16 (half its memory on every data-parallel
    # process; the losses still compute in float32 from its upcast logits and Q/K/V)
    teacher_dtype: str = "float32"
    # With several processes: a whole teacher on each (replicated), or 1/N of it per process, gathered one
    # decoder layer at a time for its forward (sharded; FSDP2, train/sharding.py). One process: no effect.
    teacher_sharding: str = "replicated"
    train: dict[str, Any] = field(default_factory=dict)

    def weights(self, kind: str) -> tuple[float, float]:
        lam, gam = PAPER_WEIGHTS.get(kind, PAPER_WEIGHTS["classification"])
        lam = lam if self.lambda_logits is None else self.lambda_logits
        gam = gam if self.gamma_attention is None else self.gamma_attention
        return lam, gam


@dataclass
class EvalSpec:
    enabled: bool = True
    stages: list[str] = field(default_factory=lambda: ["teacher", "bitnet_sft", "distill"])


@dataclass
class Recipe:
    name: str = "bitdistill"
    model: str = "smollm2-135m"  # the student's full-precision base: local dir, .gguf, hub id or embedded
    output_dir: str | None = None  # default runs/<name>
    seed: int = 42
    task: TaskSpec = field(default_factory=TaskSpec)
    bitnet: BitNetSpec = field(default_factory=BitNetSpec)
    train: dict[str, Any] = field(default_factory=dict)  # defaults for every stage's train section
    teacher: TeacherStage = field(default_factory=TeacherStage)
    bitnet_sft: SFTStage = field(default_factory=SFTStage)
    continue_pretrain: PretrainStage = field(default_factory=PretrainStage)
    distill: DistillStage = field(default_factory=DistillStage)
    eval: EvalSpec = field(default_factory=EvalSpec)
    stage_dirs: dict[str, str] = field(default_factory=dict)  # put a stage's directory elsewhere
    # Ablation rows: label -> {dotted.key: value} overrides of this recipe (see pipeline/ablations.py).
    ablations: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "<recipe>"  # where it was read from (not a YAML key)
    data: dict[str, Any] = field(default_factory=dict, repr=False)  # the parsed mapping (not a YAML key)

    @property
    def out(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    def stage_dir(self, stage: str) -> Path:
        return Path(self.stage_dirs[stage]) if stage in self.stage_dirs else self.out / stage

    def train_config(self, stage: str) -> TrainConfig:
        """The stage's TrainConfig: defaults < recipe `train:` < stage `train:`; the seed is the recipe's."""
        merged = {"seed": self.seed, **self.train, **getattr(self, stage).train}
        where = f"{self.source}: {stage}.train"  # fields join as "...train.lr"
        cfg = _build(TrainConfig, merged, where)
        cfg.validate(where)
        return cfg

    def validate(self) -> None:
        src = self.source
        if self.task.max_length < 8:
            raise BitDistillError(f"{src}: task.max_length: must be >= 8, got {self.task.max_length}")
        if self.bitnet.granularity not in GRANULARITIES:
            raise BitDistillError(
                f"{src}: bitnet.granularity: {self.bitnet.granularity!r} is not tensor, channel or group"
            )
        if self.distill.temperature <= 0:
            raise BitDistillError(f"{src}: distill.temperature: must be > 0, got {self.distill.temperature}")
        if isinstance(self.distill.student_layer, str) and self.distill.student_layer != "auto":
            raise BitDistillError(
                f"{src}: distill.student_layer: expected a layer index or auto, got {self.distill.student_layer!r}"
            )
        subln_mode(self.bitnet.subln, f"{src}: bitnet.subln")
        for key, allowed in (("kd_positions", KD_POSITIONS), ("relation", RELATIONS), ("qkv_source", QKV_SOURCES),
                             ("teacher_dtype", TEACHER_DTYPES), ("teacher_sharding", TEACHER_SHARDINGS)):
            value = getattr(self.distill, key)
            if value not in allowed:
                raise BitDistillError(f"{src}: distill.{key}: {value!r} is not one of {', '.join(allowed)}")
        if self.distill.relation_heads is not None and self.distill.relation_heads < 1:
            raise BitDistillError(f"{src}: distill.relation_heads: must be >= 1")
        if self.distill.enabled and not (self.distill.ce or self.distill.logits or self.distill.attention):
            raise BitDistillError(f"{src}: distill: ce, logits and attention are all false; enable one")
        cp = self.continue_pretrain
        if cp.enabled and not cp.corpus.sources:
            raise BitDistillError(
                f"{src}: continue_pretrain.corpus.sources: empty; list text files/directories, or set "
                "continue_pretrain.enabled: false"
            )
        if cp.corpus.block_size < 8 or cp.corpus.tokens < cp.corpus.block_size:
            raise BitDistillError(
                f"{src}: continue_pretrain.corpus: need block_size >= 8 and tokens >= block_size"
            )
        for s in self.stage_dirs:
            if s not in STAGES:
                raise BitDistillError(f"{src}: stage_dirs.{s}: not a stage; use one of {STAGES}")
        for s in self.eval.stages:
            if s not in STAGES:
                raise BitDistillError(f"{src}: eval.stages: {s!r} is not one of {STAGES}")
        for s in STAGES:
            if getattr(self, s).enabled:
                self.train_config(s)


# -- dict -> dataclass with errors that name the field ---------------------------------------------------

_SUFFIX = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000, "g": 1_000_000_000}


def parse_count(value: Any, where: str) -> int:
    """An integer from 123, 1e6, '2M', '500k', '1.5B'."""
    if isinstance(value, bool):
        raise BitDistillError(f"{where}: expected a count, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        s = value.strip().lower().replace("_", "").replace(",", "")
        mult = _SUFFIX.get(s[-1:], 1)
        num = s[:-1] if mult != 1 else s
        try:
            out = float(num) * mult
        except ValueError:
            pass
        else:
            if out.is_integer():
                return int(out)
    raise BitDistillError(f"{where}: expected a count such as 2000, 1e6, 2M or 500k, got {value!r}")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for i, arg in enumerate(args):  # the first type that takes the value (int | str: 3 -> 3, auto)
            try:
                return _convert(arg, value, where)
            except BitDistillError:
                if i == len(args) - 1:
                    raise
    if value is None:
        raise BitDistillError(f"{where}: must not be empty (null)")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise BitDistillError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if where.endswith(".tokens"):
            return parse_count(value, where)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise BitDistillError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise BitDistillError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise BitDistillError(f"{where}: expected a string, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value] if isinstance(value, str | int | float) else value
        if not isinstance(value, list):
            raise BitDistillError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise BitDistillError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _join(where: str, key: object) -> str:
    return f"{where}{key}" if where.endswith(": ") else f"{where}.{key}"


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise BitDistillError(f"{where}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("source", "data")]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(names)}"
            raise BitDistillError(f"{_join(where, key)}: unknown field{hint}")
        kwargs[key] = _convert(hints[key], value, _join(where, key))
    return cls(**kwargs)


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    """A validated Recipe from a YAML mapping; errors name `source` and the field."""
    if not isinstance(data, dict):
        raise BitDistillError(
            f"{source}: a recipe must be a YAML mapping of fields, got {type(data).__name__}"
        )
    recipe = _build(Recipe, data, f"{source}: ")
    recipe.source = source
    recipe.data = copy.deepcopy(data)
    recipe.validate()
    return recipe


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe file; `overrides` are `dotted.key=value` strings (YAML values)."""
    p = Path(path)
    if not p.is_file():
        raise BitDistillError(f"{p}: no such recipe file")
    from .yamlio import load_yaml  # rejects duplicate keys

    try:
        data = load_yaml(p.read_text(encoding="utf-8"), str(p)) or {}
    except UnicodeDecodeError as err:
        raise BitDistillError(f"{p}: not UTF-8 text (byte {err.start}); save the recipe as UTF-8") from None
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BitDistillError(f"--set {item!r}: expected dotted.key=value, e.g. distill.train.steps=50")
        set_dotted(data, key, yaml.safe_load(raw), f"--set {item!r}")
    return parse_recipe(data, str(p))


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """data['a']['b']['c'] = value for key 'a.b.c', creating mappings on the way."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise BitDistillError(f"{where}: {part} is not a mapping")
    node[parts[-1]] = value
