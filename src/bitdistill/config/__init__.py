"""Configuration as plain data: the recipe schema, each stage's TrainConfig, the allowed option values.

Importing this package imports neither torch nor transformers (tests/test_architecture.py checks), so a
recipe can be parsed, checked and fingerprinted before anything heavy loads.
"""

from .bitnet import BitNetConfig
from .choices import GRANULARITIES, KD_POSITIONS, QKV_SOURCES, RELATIONS, STAGES, SUBLN_MODES, subln_mode
from .recipe import PAPER_WEIGHTS, Recipe, load_recipe, parse_recipe, set_dotted
from .train import TrainConfig

__all__ = [
    "BitNetConfig",
    "GRANULARITIES",
    "KD_POSITIONS",
    "PAPER_WEIGHTS",
    "QKV_SOURCES",
    "RELATIONS",
    "STAGES",
    "SUBLN_MODES",
    "Recipe",
    "TrainConfig",
    "load_recipe",
    "parse_recipe",
    "set_dotted",
    "subln_mode",
]
