"""`bitdistill inspect DIR [--json]`: what a model directory (bitdistill, HF or packed) holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show architecture, BitLinear/SubLN counts, ternary shares and sizes of a model directory",
    )
    p.add_argument("dir", metavar="DIR", help="a directory written by bitdistill convert/train/pack, or any HF "
                   "model dir")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def is_packed(path: str) -> bool:
    config = Path(path) / "config.json"
    try:
        return config.is_file() and "packed" in json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError):
        return False  # the regular loader reports the broken file


def summarize_packed(path: str) -> dict:
    """The `summarize` fields a packed directory can answer (it holds no PyTorch model to load)."""
    import numpy as np

    from ..runtime.packed import LINEARS, SUBLN_LINEARS, load_packed, unpack_weight

    pm = load_packed(path)
    arch = pm.arch
    counts = np.zeros(3, dtype=np.int64)
    for i in range(arch["n_layers"]):
        for name in LINEARS:
            counts += np.bincount(unpack_weight(pm, i, name).ravel().astype(np.int64) + 1, minlength=3)
    total = int(counts.sum())
    return {
        "architecture": f"packed {arch['family']}",
        "packed": {k: arch[k] for k in ("bits", "head_dtype", "embed_dtype", "tied", "subln") if k in arch},
        "num_layers": arch["n_layers"],
        "hidden_size": arch.get("hidden"),
        "num_ternary_linears": arch["n_layers"] * len(LINEARS),
        "num_subln": arch["n_layers"] * len(SUBLN_LINEARS.get(arch["subln"], ())),
        "ternary_parameters": total,
        "ternary_share": {k: float(c) / total for k, c in zip(("-1", "0", "+1"), counts, strict=True)},
        "linear_bytes_on_disk": pm.linear_bytes(),
        "directory": str(path),
        "disk_bytes": sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()),
    }


def format_packed(info: dict) -> str:
    p, sh = info["packed"], info["ternary_share"]
    return "\n".join([
        f"architecture     {info['architecture']}, {info['num_layers']} blocks, hidden {info['hidden_size']}",
        f"packing          {p.get('bits')}-bit linears, head {p.get('head_dtype')}, embeddings "
        f"{p.get('embed_dtype')}{' (tied)' if p.get('tied') else ''}, subln={p.get('subln')}",
        f"ternary linears  {info['num_ternary_linears']} ({info['ternary_parameters'] / 1e6:.1f}M weights, "
        f"{info['linear_bytes_on_disk'] / 2**20:.1f} MiB on disk); SubLN norms {info['num_subln']}",
        f"ternary shares   -1: {sh['-1']:.2%}   0: {sh['0']:.2%}   +1: {sh['+1']:.2%}",
        f"on disk          {info['disk_bytes'] / 2**20:.1f} MiB ({info['directory']})",
    ])  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if is_packed(args.dir):
        info = summarize_packed(args.dir)
        print(json.dumps(info, indent=2) if args.json else format_packed(info))
        return 0
    from ..model.hub import load_any
    from ..model.summary import format_summary, summarize

    model, _ = load_any(args.dir)
    info = summarize(model.eval(), args.dir)
    print(json.dumps(info, indent=2) if args.json else format_summary(info))
    return 0
