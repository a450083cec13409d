"""`bitdistill sweep-layers RECIPE.yaml`: pick the attention-distillation layer by sweep and/or criterion."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep-layers",
        help="short distillations at several student layers (and a no-sweep criterion); report the best",
        description="Runs the recipe's teacher and continued pre-training if needed, then one short "
        "distillation per layer (under RUN/layer_sweep/layer_<l>/, resumable), evaluates each, and writes "
        "RUN/layer_sweep.json. The criterion (relation divergence at initialisation) needs no training; "
        "--criterion-only computes just that.",
    )
    p.add_argument("recipe", help="the recipe YAML file")
    p.add_argument("--layers", default="all", help="'all' (default), '0,8,-1' or a slice 'start:stop:step'")
    p.add_argument("--steps", type=int, help="distillation steps per layer (default: the recipe's)")
    p.add_argument("--output-dir", help="override output_dir (the run directory)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    p.add_argument("--criterion-only", action="store_true", help="only the no-sweep criterion: no training")
    p.add_argument("--no-criterion", action="store_true", help="only the sweep")
    p.add_argument("--no-base", action="store_true", help="skip the task-shift score (no base model load)")
    p.add_argument("--examples", type=int, default=64, help="training examples the criterion reads (64)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import BitDistillError
    from ..pipeline import load_recipe
    from ..pipeline.layer_sweep import SWEEP_FILE, sweep_layers

    if args.criterion_only and args.no_criterion:
        raise BitDistillError("--criterion-only and --no-criterion exclude each other; pick one")
    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    recipe = load_recipe(args.recipe, overrides)
    result = sweep_layers(
        recipe, args.layers, steps=args.steps, criterion=not args.no_criterion, criterion_examples=args.examples,
        with_base=not args.no_base, run_sweep=not args.criterion_only,
    )  # fmt: skip
    name = result.get("metric_name", "accuracy")
    print(f"{'layer':>5} {'teacher':>7} {name:>10} {'divergence':>11}")
    for e in result["layers"]:
        m = e.get("metric")
        c = e.get("criterion")
        print(f"{e['student_layer']:>5} {e['teacher_layer']:>7} {'—' if m is None else f'{m:.4f}':>10} "
              f"{'—' if c is None else f'{c:.5g}':>11}")  # fmt: skip
    if "best_layer" in result:
        print(f"best layer by sweep: {result['best_layer']} ({name} {result['best_metric']:.4f})")
    crit = result.get("criterion")
    if crit:
        line = f"criterion ({crit['name']}) picks layer {crit['pick']}"
        if crit.get("points_below_best") is not None:
            line += (
                f": {crit['points_below_best']:.2f} points below the best (within 0.5: {crit['within_0_5']})"
            )
        print(line)
    print(f"wrote {recipe.out / SWEEP_FILE}")
    return 0
