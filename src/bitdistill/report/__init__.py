"""Reports of finished runs: the paper's comparison table, training tables, figures (report.md/.json).

It reads run directories (run_dir.py) and never trains; `run_recipe` here is the pipeline's run followed
by the report, which is what `bitdistill run` does. matplotlib loads only when a report is written, so
`bitdistill run --check` does not pay for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._lazy import lazy_getattr
from ..config.recipe import Recipe
from ..pipeline import run as pipeline_run
from ..pipeline.launch import Launch


def report_run(run_dir: str | os.PathLike) -> Path:
    """Write report.md and report.json into a finished run directory; return report.md's path."""
    from .run_report import REPORT_MD, write_report

    write_report(run_dir)
    return Path(run_dir) / REPORT_MD


def run_recipe(
    recipe: Recipe,
    only: list[str] | None = None,
    restart: tuple[str, ...] = (),
    check_only: bool = False,
    launch: Launch | None = None,
) -> dict[str, Any]:
    """Run a recipe (bitdistill.pipeline.run_recipe), then write its report; return results.json's content."""
    return pipeline_run.run_recipe(recipe, only, restart, check_only, report=report_run, launch=launch)


__getattr__ = lazy_getattr(__name__, {"build_report": ".run_report", "write_report": ".run_report"})

__all__ = ["build_report", "report_run", "run_recipe", "write_report"]
