"""Every stage of the pipeline on one CUDA GPU in bf16, offline, in a few minutes (run by gpu_check.sh).

A tiny random Qwen3 (the paper's architecture, SmolLM2's tokenizer from the embedded GGUF, so nothing is
downloaded) goes through teacher SFT, BitNet-SFT, continued pre-training (builtin:austen), distillation with
the teacher on the same GPU (logits + attention-relation KD), evaluation on the shipped SST-2 dev set, and
packing for the CPU runtime. While training and evaluating, every linear, matmul, attention and embedding
call is checked: one whose tensors are not on the GPU (a silent CPU fallback) fails the check.

Prints a table (per stage: steps, steps/s, tokens/s, peak GPU memory) and writes JSON
(default benchmarks/results/gpu-check.json). `--device cpu` runs the same flow on the CPU (the test suite
uses it with a few steps, so the script itself stays tested where no GPU is).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

STAGES = ("teacher", "bitnet_sft", "continue_pretrain", "distill")
CHECKED = {
    F.linear: "linear", torch.matmul: "matmul", torch.bmm: "bmm", F.embedding: "embedding",
    F.scaled_dot_product_attention: "sdpa", F.cross_entropy: "cross_entropy",
}  # fmt: skip


class DeviceGuard(TorchFunctionMode):
    """Records every checked call (CHECKED) whose tensor arguments are not all on `device_type`."""

    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type
        self.offenders: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = CHECKED.get(func)
        if name is not None:
            devices = {a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
            if devices - {self.device_type}:
                key = f"{name} on {'/'.join(sorted(devices))}"
                self.offenders[key] = self.offenders.get(key, 0) + 1
        return func(*args, **kwargs)


def tiny_qwen3(out: Path, hidden: int, layers: int) -> Path:
    """A random Qwen3 with SmolLM2's tokenizer, saved as a local Hugging Face directory."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from bitdistill.model.hub import resolve

    path, kwargs = resolve("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128), head_dim=64,
        tie_word_embeddings=True, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    Qwen3ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def recipe_for(model: Path, out: Path, steps: int, precision: str, eval_limit: int, batch: int, block: int):
    from bitdistill.config import parse_recipe

    return parse_recipe(
        {
            "name": "gpu-check", "model": str(model), "output_dir": str(out), "seed": 1,
            "task": {"name": "sst2", "path": "builtin:sst2", "max_length": 64, "train_limit": 4000,
                     "eval_limit": eval_limit, "eval_batch_size": 64},
            "bitnet": {"subln": "all"},
            "train": {"batch_size": batch, "lr": 1e-3, "warmup_steps": 2, "precision": precision, "steps": steps,
                      "save_every": steps, "log_every": max(1, steps // 4), "progress": False},
            "continue_pretrain": {"corpus": {"sources": ["builtin:austen"], "block_size": block,
                                             "tokens": steps * batch * block}},
            "distill": {"student_layer": -1, "teacher_layer": -1},
        },
        "gpu_check",
    )  # fmt: skip


def run_check(
    device: str,
    steps: int,
    hidden: int,
    layers: int,
    eval_limit: int,
    batch: int = 32,
    block: int = 256,
    keep: Path | None = None,
) -> dict:
    from bitdistill.report import run_recipe  # the run and its report, as `bitdistill run`

    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: no CUDA device visible (torch.cuda.is_available() is False); nothing ran"
        )
    if not cuda and torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: --device cpu asked for, but CUDA is visible; hide it (CUDA_VISIBLE_DEVICES=)"
        )
    precision = "bf16" if cuda else "fp32"
    root = keep or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model = tiny_qwen3(root / "base", hidden, layers)
    recipe = recipe_for(model, root / "run", steps, precision, eval_limit, batch, block)
    guard = DeviceGuard(device)
    rows: dict[str, dict] = {}
    t_all = time.perf_counter()
    for stage in (*STAGES, "eval"):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with guard:
            result = run_recipe(recipe, only=[stage])
        seconds = time.perf_counter() - t0
        record = result["stages"].get(stage, {})
        rows[stage] = {
            "seconds": seconds,
            "steps": record.get("steps"),
            "steps_per_s": (record.get("steps") or 0) / max(seconds, 1e-9),
            "tokens_per_s": record.get("tokens_per_second"),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        }
        if stage == "eval":
            rows[stage]["metrics"] = {s: result["stages"][s].get("eval") for s in result["stages"]}
    t0 = time.perf_counter()
    from bitdistill.model.hub import load_any
    from bitdistill.runtime.pack_writer import pack_model

    student, tok = load_any(root / "run" / "distill" / "model")
    packed = pack_model(
        student, root / "packed", tokenizer=tok
    )  # the CPU runtime's format: packing is CPU work
    rows["pack"] = {"seconds": time.perf_counter() - t0, "out": str(packed)}
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "precision": precision,
        "model": {"hidden": hidden, "layers": layers, "vocab": len(tok)},
        "steps_per_stage": steps,
        "batch": batch,
        "block": block,
        "stages": rows,
        "cpu_fallbacks": guard.offenders,
        "wall_seconds": time.perf_counter() - t_all,
    }


def table(res: dict) -> str:
    lines = [f"gpu_check on {res['device']} (torch {res['torch']}, {res['precision']}, tiny Qwen3 "
             f"{res['model']['hidden']}x{res['model']['layers']})", "",
             "| stage | steps | s | steps/s | tokens/s | peak GPU memory |", "|---|---|---|---|---|---|"]  # fmt: skip
    for stage, r in res["stages"].items():
        peak = f"{r['peak_gpu_bytes'] / 2**20:.0f} MiB" if r.get("peak_gpu_bytes") is not None else "-"
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else "-"
        sps = f"{r['steps_per_s']:.2f}" if r.get("steps") else "-"
        lines.append(f"| {stage} | {r.get('steps') or '-'} | {r['seconds']:.1f} | {sps} | {tps} | {peak} |")
    for stage, metrics in res["stages"]["eval"].get("metrics", {}).items():
        if metrics:
            lines.append(
                f"eval {stage}: accuracy {metrics.get('accuracy', float('nan')):.4f} (n={metrics.get('n')})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per training stage")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--eval-limit", type=int, default=872, help="dev sentences evaluated (872 = all)")
    p.add_argument("--batch", type=int, default=32, help="sequences per step (task stages and pre-training)")
    p.add_argument("--block", type=int, default=256, help="continued pre-training block length")
    p.add_argument(
        "--keep", type=Path, default=None, help="work directory to keep (default: a temporary one)"
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu-check.json")
    args = p.parse_args(argv)
    res = run_check(
        args.device, args.steps, args.hidden, args.layers, args.eval_limit, args.batch, args.block, args.keep
    )
    print(table(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    if res["cpu_fallbacks"]:
        print(
            f"gpu_check: FAILED: calls off the {args.device} device: {res['cpu_fallbacks']}", file=sys.stderr
        )
        return 1
    print(f"gpu_check: ok, every checked call ran on {args.device}, {res['wall_seconds']:.0f}s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
