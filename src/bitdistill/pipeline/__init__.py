"""The pipeline: the one package that knows recipes and run directories (docs/pipeline.md).

It runs a recipe's stages (stages/), skips finished ones (markers.py, fingerprint.py, state.py), locks a
run directory (lock.py), runs ablation rows (ablations.py) and the layer sweep (layer_sweep.py).
The recipe's schema itself is plain data in bitdistill.config, re-exported here for convenience.
"""

from ..config import PAPER_WEIGHTS, STAGES, Recipe, load_recipe, parse_recipe
from .launch import Launch
from .run import run_recipe, run_stage

__all__ = ["PAPER_WEIGHTS", "STAGES", "Launch", "Recipe", "load_recipe", "parse_recipe", "run_recipe", "run_stage"]
