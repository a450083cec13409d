"""Recipes: one YAML file describes a whole BitDistill run (see docs/pipeline.md)."""

from .run import run_recipe, run_stage  # noqa: I001  (after schema: run imports the stages)
from .schema import PAPER_WEIGHTS, STAGES, Recipe, load_recipe, parse_recipe

__all__ = ["PAPER_WEIGHTS", "STAGES", "Recipe", "load_recipe", "parse_recipe", "run_recipe", "run_stage"]
