"""`bitdistill run RECIPE.yaml`: the whole pipeline as one reproducible, resumable command."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a recipe: teacher -> bitnet_sft -> continue_pretrain -> distill -> eval",
        description="Run a YAML recipe. Everything is checked first (paths, layers, sizes, numbers) and the "
        "plan printed. Finished stages are skipped and an interrupted stage resumes from its last checkpoint, "
        "only if the recipe still gives the same stage fingerprint; otherwise the run stops naming the "
        "settings that changed. Writes results.json in the output directory.",
    )
    p.add_argument("recipe", help="the recipe YAML file (see configs/)")
    p.add_argument("--output-dir", help="override output_dir (default runs/<name>)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a field, e.g. --set distill.train.steps=20 (repeatable; VALUE is YAML)",
    )  # fmt: skip
    p.add_argument(
        "--only",
        help="comma-separated stages to run (teacher,bitnet_sft,continue_pretrain,distill,ablations,eval)",
    )
    p.add_argument(
        "--check", action="store_true",
        help="check the recipe (model paths and configs, layers, relation heads, group and batch sizes, "
        "numbers, finished stages against the recipe) and print the plan; train nothing, write nothing",
    )  # fmt: skip
    p.add_argument(
        "--num-processes", metavar="N",
        help="with --check: plan memory per device for N processes (GPUs) instead of this launch's (under "
        "`accelerate launch` the plan reads the launch's own)",
    )  # fmt: skip
    p.add_argument(
        "--fsdp", action="store_true",
        help="with --check: plan for FSDP2 sharding over the processes (configs/accelerate/fsdp.yaml)",
    )
    p.add_argument(
        "--restart", metavar="STAGE[,STAGE]|all",
        help="retrain these stages from scratch: their old outputs are removed first (ablations: every "
        "ablation row; all: every stage and row)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import STAGES, load_recipe
    from ..errors import BitDistillError
    from ..pipeline.launch import planned_launch
    from ..pipeline.run import parse_restart
    from ..report import run_recipe

    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    recipe = load_recipe(args.recipe, overrides)
    only = [s.strip().replace("-", "_") for s in args.only.split(",")] if args.only else None
    known = (*STAGES, "ablations", "eval")
    for s in only or []:
        if s not in known:
            raise BitDistillError(f"--only: {s!r} is not one of {', '.join(known)}")
    restart = parse_restart(args.restart)
    planned = args.num_processes is not None or args.fsdp
    launch = planned_launch(args.num_processes, args.fsdp) if planned else None
    result = run_recipe(recipe, only, restart, check_only=args.check, launch=launch)
    if args.check:
        print("\n".join(result["plan"]))
        print("check: ok")
    return 0
