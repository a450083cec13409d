"""`accelerate launch tests/multiproc_eval.py MODEL_DIR SST2_DIR OUT.json`: evaluation split over the
launched processes. Rank 0 writes which rank computed each item of `across_ranks` and the gathered
predictions and metrics of `evaluate_model` on the dev split, for tests/test_multiprocess.py to compare
with one process."""

from __future__ import annotations

import json
import sys

import torch

from bitdistill.data.tasks import get_task
from bitdistill.eval.evaluate import evaluate_model, load_for_eval
from bitdistill.train.distributed import across_ranks, init_group, rank_and_world

ITEMS = 11  # not a multiple of the process count: one rank gets one item more


def main(model_dir: str, data_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    init_group()
    rank, world = rank_and_world()
    tagged = across_ranks(lambda part: [[rank, x] for x in part], list(range(ITEMS)))
    model, tok, _ = load_for_eval(model_dir, device="cpu")
    task = get_task("sst2")
    result = evaluate_model(
        model, tok, task, task.load("dev", path=data_dir), batch_size=5, keep_predictions=True
    )
    if rank == 0:
        record = {
            "world": world,
            "tagged": tagged,
            "predictions": result["predictions"],
            "metrics": result["metrics"],
        }
        with open(out, "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
