"""Ablation rows (the paper's Tables 5 and 6): variants of a recipe that reuse its teacher and stage 2.

A recipe's `ablations:` maps a row label to dotted overrides of the recipe itself:

    ablations:
      "w/o continued pre-training": {continue_pretrain.enabled: false}
      "w/o distillation": {distill.logits: false, distill.attention: false}
      "LD only": {distill.attention: false}
      "AD only": {distill.logits: false}

Each variant runs under `<out>/ablations/<slug>/`. It reuses the main run's teacher and continued
pre-training output when its overrides leave that stage's fingerprint unchanged (pipeline/fingerprint.py:
the same model, data, conversion and training settings), and runs its own otherwise (a `bitnet.subln` row
needs its own stage 2; a `seed` row its own teacher too). It trains and evaluates its distill stage;
`run_recipe` records it in results.json under "ablations", and the report adds it as a row beside FP16-SFT,
BitNet-SFT and BitDistill.
"""

from __future__ import annotations

import copy
import re

from ..config.recipe import Recipe, parse_recipe, set_dotted
from ..errors import BitDistillError
from .fingerprint import stage_fingerprint

ABLATIONS_DIR = "ablations"


def slug(label: str) -> str:
    """A directory name for a row label: 'w/o distillation' -> 'w-o-distillation'."""
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-") or "variant"


def variant(recipe: Recipe, label: str) -> Recipe:
    """The recipe of one ablation row, validated; errors name `ablations.<label>`."""
    overrides = recipe.ablations[label]
    where = f"{recipe.source}: ablations.{label}"
    if not isinstance(overrides, dict) or not overrides:
        raise BitDistillError(
            f"{where}: expected a mapping of dotted.key: value overrides, got {overrides!r}"
        )
    data = copy.deepcopy(recipe.data)
    data.pop("ablations", None)
    data.pop("stage_dirs", None)  # the variant's stages are its own, except the two it reuses below
    for key, value in overrides.items():
        if key.split(".")[0] in ("ablations", "output_dir", "stage_dirs", "name"):
            raise BitDistillError(f"{where}: {key} cannot be overridden in an ablation")
        set_dotted(data, str(key), value, f"{where}.{key}")
    data["output_dir"] = str(recipe.out / ABLATIONS_DIR / slug(label))
    data.setdefault("bitnet_sft", {})["enabled"] = False  # the baseline row is the main run's
    data.setdefault("eval", {})["stages"] = ["distill"]
    out = parse_recipe(data, where)
    if not out.distill.enabled:
        raise BitDistillError(f"{where}: distill.enabled is false; an ablation row is a distill stage")
    dirs = {}
    for stage in ("teacher", "continue_pretrain"):
        mine, main = getattr(out, stage).enabled, getattr(recipe, stage).enabled
        if not mine and not main:
            dirs[stage] = str(recipe.stage_dir(stage))  # a finished stage both read from the main run's dir
        elif mine and main and stage_fingerprint(out, stage) == stage_fingerprint(recipe, stage):
            dirs[stage] = str(recipe.stage_dir(stage))  # the very stage the main run trains
    out.stage_dirs = dirs
    return out


def variants(recipe: Recipe) -> dict[str, Recipe]:
    """Every ablation's recipe, built before anything trains so a bad override fails fast."""
    return {label: variant(recipe, label) for label in recipe.ablations}


__all__ = ["ABLATIONS_DIR", "slug", "variant", "variants"]
