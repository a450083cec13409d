"""Deployment formats: GGUF for llama.cpp (ternary TQ2_0 / TQ1_0 linears)."""

from .gguf_export import ExportReport, export_directory, export_gguf, qk_permutation
from .source import ExportSource, from_directory, from_model

__all__ = [
    "ExportReport",
    "ExportSource",
    "export_directory",
    "export_gguf",
    "from_directory",
    "from_model",
    "qk_permutation",
]
