"""Task accuracy of a trained model through the runtime, per head / embedding dtype, against the torch model.

Inputs (produced by the commands in docs/runtime.md, "Fidelity"): the torch reference, one JSON line from
`python src/bitdistill/bench/_worker.py classify-torch MODEL_DIR --data DIR --max-length 512` (its
per-sentence predictions and labels), and per packed variant the `--out` file of `bitdistill classify
PACKED --max-length 512` (JSON lines with "pred" and "label"). Prints a table and writes JSON.

    python benchmarks/fidelity_sst2.py --reference ref.json --variant "fp16 head, fp16 embedding=preds.jsonl" ...
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _verb import RESULTS


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a proportion k/n."""
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="the torch worker's JSON output")
    ap.add_argument("--variant", action="append", required=True, help="NAME=PREDS.jsonl (repeatable)")
    ap.add_argument("--out", default=str(RESULTS / "fidelity-smollm2-sst2.json"))
    args = ap.parse_args()
    ref = json.loads(Path(args.reference).read_text().strip().splitlines()[-1])
    labels, ref_preds = ref["labels"], ref["preds"]
    n = len(labels)
    ref_acc = sum(p == y for p, y in zip(ref_preds, labels, strict=True)) / n
    rows = {
        "torch BitNet (fp32)": {"accuracy": ref_acc, "identical": 1.0, "ci95": wilson(round(ref_acc * n), n)}
    }
    for spec in args.variant:
        name, path = spec.split("=", 1)
        preds = [json.loads(line) for line in Path(path).read_text().splitlines()]
        if [p["label"] for p in preds] != labels:
            raise SystemExit(f"{path}: not the reference's sentences (labels differ)")
        k = sum(p["pred"] == y for p, y in zip(preds, labels, strict=True))
        same = sum(p["pred"] == r for p, r in zip(preds, ref_preds, strict=True))
        rows[name] = {"accuracy": k / n, "identical": same / n, "ci95": wilson(k, n),
                      "delta_points": 100 * (k / n - ref_acc)}  # fmt: skip
    lines = [f"SST-2 dev, {n} sentences", "", "| model | accuracy [95 % CI] | vs torch (points) | identical "
             "predictions |", "|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        lo, hi = r["ci95"]
        delta = f"{r['delta_points']:+.2f}" if "delta_points" in r else "-"
        lines.append(f"| {name} | {100 * r['accuracy']:.2f} [{100 * lo:.1f}-{100 * hi:.1f}] | {delta} | "
                     f"{100 * r['identical']:.2f} % |")  # fmt: skip
    print("\n".join(lines))
    Path(args.out).write_text(json.dumps({"n": n, "reference": args.reference, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
