"""Decode/prefill speed and peak memory: the native runtime (2-bit, 1.58-bit) vs PyTorch eager fp32/bf16.

Every measurement runs in its own subprocess (so peak RSS is that engine's alone), on the same model:
  smollm2-135m   the embedded SmolLM2-135M-Instruct (GGUF dequantized to fp32), ternarized as is;
  qwen3-0.6b     a random-weight Qwen3-0.6B-shaped model built from a config (28 layers, hidden 1024,
                 16/8 heads, head_dim 128, FFN 3072, vocab 151936, tied embeddings), seed 0;
  a path         any model directory / GGUF load_any understands (BitNet or converted as is).
The runtime worker never imports torch (checked); PyTorch workers use transformers with a KV cache.
Per engine: `runs` repetitions of a `prefill`-token prompt then `decode` greedy tokens; the table shows
the median with min/max. With `rounds` > 1 the engines take turns, one worker process each per round, and
each engine's runs of every round are pooled: on a VM whose speed drifts for tens of seconds at a time, one
engine's block of runs can fall in a slow spell the next one misses, and alternating spreads the spells over
all of them (the ratios between engines are what the tables are for).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .._spread import format_spread, spread
from ..env import user_environ
from .llama_bench import ENGINE_PREFIX as LLAMA_BENCH
from .llama_bench import run_llama_bench

WORKER = Path(__file__).with_name("_worker.py")
QWEN3_SHAPE = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, max_position_embeddings=40960,
    rope_theta=1000000.0, rms_norm_eps=1e-6,
)  # fmt: skip


def build_fp_model(spec: str, dtype=None):
    """(full-precision model, tokenizer or None) for a bench spec, built directly in `dtype` (default fp32)
    so a bf16 process never holds an fp32 copy (its peak RSS is then bf16's own)."""
    import torch

    dtype = dtype or torch.float32
    if spec == "qwen3-0.6b":
        from transformers import AutoModelForCausalLM, Qwen3Config

        torch.manual_seed(0)  # random weights: same shapes and work at every dtype (values are irrelevant)
        with torch.device("cpu"):
            model = AutoModelForCausalLM.from_config(Qwen3Config(**QWEN3_SHAPE), dtype=dtype)
        return model, None
    from ..model.hub import load_any

    return load_any(spec, dtype=dtype)


def prepare(spec: str, work: Path, head_dtype: str = "int8") -> dict[str, Path]:
    """Pack the model at 2 and 1.58 bits under `work` (reused when present); returns {bits: dir}."""
    from ..model.convert import is_bitnet, to_bitnet
    from ..runtime.pack_writer import pack_model

    out = {b: work / f"packed-{b}-{head_dtype}" for b in ("2", "1.58")}
    if all((d / "config.json").is_file() for d in out.values()):
        return out
    model, tok = build_fp_model(spec)
    if not is_bitnet(model):
        to_bitnet(model, subln=False)
    model.eval()
    for bits, d in out.items():
        pack_model(model, d, bits=bits, head_dtype=head_dtype, tokenizer=tok)
    return out


def llamacpp_engines() -> tuple[str, ...]:
    """The llama.cpp engine, when llama-cpp-python is installed (benchmarks/llamacpp_check.py installs it)."""
    import importlib.util

    return ("llamacpp-tq2_0",) if importlib.util.find_spec("llama_cpp") is not None else ()


def prepare_llamacpp(spec: str, work: Path, ttype: str = "tq2_0") -> Path:
    """The same model exported to GGUF (ternary `ttype` linears, Q4_0 head, as the issue's reference)."""
    from ..export.llamacpp import prepare_gguf
    from ..model.convert import is_bitnet, to_bitnet

    cached = work / f"model-{ttype}-q4_0.gguf"
    if cached.is_file():
        return cached
    model, tok = build_fp_model(spec)
    if not is_bitnet(model):
        to_bitnet(model, subln=False)  # stock llama.cpp has no SubLN
    return prepare_gguf(model.eval(), work, tokenizer=tok, ttype=ttype, head="q4_0")


KV_SUFFIX = "kv16"  # runtime-...-kv16: the engine's KV cache in IEEE half (llama.cpp's default), not fp32


def runtime_engine(name: str, default_head: str) -> tuple[str, str, str]:
    """("2" | "1.58", head dtype, KV cache dtype) of a runtime engine name: runtime-BITS uses the default head
    dtype, runtime-BITS-HEAD (e.g. runtime-2-q4) names its own; a trailing -kv16 keeps the KV cache in fp16."""
    parts = name.split("-")
    kv = "fp32"
    if len(parts) > 2 and parts[-1] == KV_SUFFIX:
        parts, kv = parts[:-1], "fp16"
    if len(parts) not in (2, 3) or parts[0] != "runtime" or parts[1] not in ("2", "1.58"):
        raise ValueError(f"not a runtime engine name: {name!r}")
    return parts[1], parts[2] if len(parts) == 3 else default_head, kv


def _run_worker(args: list[str], timeout: float, foreign: bool = False) -> dict:
    """Run bench/_worker.py with `args`; `foreign`: it runs another project's engine (llama-cpp-python),
    which gets the user's environment without our OpenMP default (env.user_environ)."""
    env = dict(user_environ() if foreign else os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(
    spec: str = "qwen3-0.6b",
    threads: int = 2,
    prefill: int = 128,
    decode: int = 128,
    runs: int = 5,
    engines: tuple[str, ...] = ("runtime-2", "runtime-1.58", "torch-fp32", "torch-bf16"),
    work: Path | None = None,
    head_dtype: str = "int8",
    log=print,
    out: Path | None = None,
    roofline: bool = False,
    llama_bench: Path | None = None,
    rounds: int = 1,
) -> dict:
    """Run every engine in its own subprocess; return the results dict (also what the JSON holds).
    roofline: measure the machine's read bandwidth first and give each runtime engine's decode speed as a
    fraction of bandwidth / bytes read per token (see roofline.py). llama_bench: the llama-bench binary the
    llama-bench-* engines run (llama_bench.py). rounds: the engines take turns this many times (see the
    module docstring), `runs` runs each per turn."""
    work = Path(work or Path("runs") / "bench" / spec.replace("/", "_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    packed: dict[str, dict[str, Path]] = {}  # head dtype -> {bits: packed dir}
    for eng in engines:
        if eng.startswith("runtime-"):
            _, head, _ = runtime_engine(eng, head_dtype)
            if head not in packed:
                packed[head] = prepare(spec, work, head)
    log(f"prepared packed models in {time.time() - t0:.0f}s under {work}")
    results: dict = {
        "model": spec,
        "threads": threads,
        "prefill_tokens": prefill,
        "decode_tokens": decode,
        "runs": runs,
        "rounds": rounds,
        "head_dtype": head_dtype,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "engines": {},
    }
    counts = sorted({1, threads})
    peak = _measure_peak(counts, results, log) if roofline else None
    bandwidth: dict[int, list[float]] = {n: [] for n in counts}
    workload = {"threads": threads, "prefill": prefill, "decode": decode, "runs": runs}
    pooled: dict[str, dict] = {}
    for rnd, eng in ((i, e) for i in range(rounds) for e in engines):
        if roofline and eng == engines[0]:  # a bandwidth sample per round (see _sample_bandwidth)
            _sample_bandwidth(bandwidth, results, log)
        log(f"running {eng}" + (f" (round {rnd + 1} of {rounds})" if rounds > 1 else "") + " ...")
        load_before = os.getloadavg()
        r = _run_engine(eng, spec, work, packed, head_dtype, workload, llama_bench)
        r["loadavg_before"], r["loadavg_after"] = [load_before], [os.getloadavg()]
        log(f"  decode {statistics.median(r['decode']):.1f} tok/s, prefill {statistics.median(r['prefill']):.1f} "
            f"tok/s, peak RSS {r['peak_rss_mib']:.0f} MiB")  # fmt: skip
        _pool(pooled, eng, r)
        for e, p in pooled.items():  # every engine's cells from its runs so far (and the bandwidth median)
            r = dict(p)
            r["decode_tok_s"] = spread(r.pop("decode"))
            r["prefill_tok_s"] = spread(r.pop("prefill"))
            if roofline and e.startswith("runtime-"):
                bw = statistics.median(bandwidth[threads])
                _add_roofline(r, packed, e, head_dtype, bw, prefill + (decode - 1) / 2)
                _add_prefill_roof(r, peak[threads])
            results["engines"][e] = r
        if out is not None:  # partial results survive an interrupted run
            write_json(results, out)
    results["machine"]["loadavg_end"] = os.getloadavg()
    if out is not None:
        write_json(results, out)
    fp32 = results["engines"].get("torch-fp32")
    if fp32:
        base = fp32["decode_tok_s"]["median"]
        for r in results["engines"].values():
            r["decode_speedup_vs_torch_fp32"] = r["decode_tok_s"]["median"] / base
    return results


def _pool(pooled: dict[str, dict], eng: str, r: dict) -> None:
    """Add one worker's result for `eng` to pooled: a later round's runs join the earlier ones."""
    if eng not in pooled:
        pooled[eng] = r
        return
    p = pooled[eng]
    for k in ("decode", "prefill", "loadavg_before", "loadavg_after"):
        p[k] += r[k]
    p["peak_rss_mib"] = max(p["peak_rss_mib"], r["peak_rss_mib"])


def _run_engine(
    eng: str, spec: str, work: Path, packed: dict, head_dtype: str, workload: dict, llama_bench: Path | None
) -> dict:
    """One engine's worker run (decode/prefill tokens/s per run, peak RSS) plus its model sizes.
    workload: threads, prefill, decode, runs."""
    common = [a for k, v in workload.items() for a in (f"--{k}", str(v))]
    if eng.startswith("runtime-"):
        bits, head, kv = runtime_engine(eng, head_dtype)
        r = _run_worker(["runtime", str(packed[head][bits]), *common, "--kv-dtype", kv], timeout=3600)
        r["head_dtype"], r["kv_dtype"] = head, kv
        cfg = json.loads((packed[head][bits] / "config.json").read_text())["packed"]["arch"]
        r["linear_bytes"] = cfg["linear_bytes_on_disk"]
        r["linear_fp16_bytes"] = 2 * cfg["linear_params"]
        r["linear_ratio_vs_fp16"] = r["linear_fp16_bytes"] / r["linear_bytes"]
    elif eng.startswith(LLAMA_BENCH):
        gguf = prepare_llamacpp(spec, work, eng[len(LLAMA_BENCH) :])
        r = run_llama_bench(llama_bench, gguf, **workload)
        r["gguf_bytes"], r["head_dtype"] = gguf.stat().st_size, "Q4_0"
    elif eng.startswith("llamacpp-"):
        gguf = prepare_llamacpp(spec, work, eng.split("-", 1)[1])
        r = _run_worker(["llamacpp", str(gguf), *common], timeout=3600, foreign=True)
        r["gguf_bytes"], r["head_dtype"] = gguf.stat().st_size, "Q4_0"
    else:
        r = _run_worker(["torch", spec, *common, "--dtype", eng.split("-", 1)[1]], timeout=3600)
    return r


def _measure_peak(counts: list[int], results: dict, log) -> dict[int, float]:
    """The int8 multiply-add peak (MAC/s) with each thread count, recorded in results["machine"]."""
    from .roofline import int8_peak

    peak = {n: int8_peak(n) for n in counts}
    results["machine"]["int8_peak_gmac_s"] = {str(n): p / 1e9 for n, p in peak.items()}
    log("int8 multiply-add peak: " + ", ".join(f"{p / 1e9:.0f} GMAC/s with {n} thread(s)" for n, p in peak.items()))
    return peak


def _sample_bandwidth(samples: dict[int, list[float]], results: dict, log) -> None:
    """One more read-bandwidth sample (bytes/s) per thread count; results["machine"] gets them all and their
    median, the roofline's: a shared VM's bandwidth moves with its neighbours (this one's 2-thread reads went
    between ~35 and ~55 GB/s for minutes at a time), so one reading can misplace it."""
    from .roofline import read_bandwidth

    for n, xs in samples.items():
        xs.append(read_bandwidth(n))
    results["machine"]["read_bandwidth_gb_s"] = {str(n): statistics.median(xs) / 1e9 for n, xs in samples.items()}
    results["machine"]["read_bandwidth_samples_gb_s"] = {str(n): [x / 1e9 for x in xs] for n, xs in samples.items()}
    log("read bandwidth: " + ", ".join(f"{xs[-1] / 1e9:.1f} GB/s with {n} thread(s)" for n, xs in samples.items()))


def _add_roofline(r: dict, packed: dict, eng: str, head_dtype: str, bandwidth: float, position: float) -> None:
    """A runtime engine's bytes per decode token at the mean decode position (weights + KV cache), the
    decode speed they allow, and its fraction of that."""
    from .roofline import decode_bytes_per_token

    bits, head, kv = runtime_engine(eng, head_dtype)
    b = decode_bytes_per_token(packed[head][bits], kv, position)
    r["decode_bytes_per_token"], r["decode_weight_bytes_per_token"] = b["total"], b["weights"]
    r["decode_kv_bytes_per_token"] = b["kv"]
    r["roofline_tok_s"] = bandwidth / r["decode_bytes_per_token"]
    r["roofline_fraction"] = r["decode_tok_s"]["median"] / r["roofline_tok_s"]


def _add_prefill_roof(r: dict, peak: float) -> None:
    """Prefill's linear-layer int8 multiply-adds per second (one per ternary weight per token; attention
    and the head excluded) and their fraction of the measured int8 peak."""
    macs = r["linear_fp16_bytes"] / 2 * r["prefill_tok_s"]["median"]
    r["prefill_linear_gmac_s"] = macs / 1e9
    r["prefill_peak_fraction"] = macs / peak if peak > 0 else None


def _runs_text(res: dict) -> str:
    rounds = res.get("rounds", 1)
    return f"{res['runs']} runs" if rounds == 1 else f"{rounds} rounds x {res['runs']} runs, engines taking turns"


def format_table(res: dict) -> str:
    head = (
        f"model {res['model']}, {res['threads']} threads, batch 1, prefill {res['prefill_tokens']} / decode "
        f"{res['decode_tokens']} tokens, median of {_runs_text(res)} [min-max]; "
        f"load avg {res['machine']['loadavg_start'][0]:.1f} -> {res['machine']['loadavg_end'][0]:.1f}"
    )
    bw = res["machine"].get("read_bandwidth_gb_s")
    if bw:
        head += "; read bandwidth " + ", ".join(f"{b:.1f} GB/s ({n} thr)" for n, b in bw.items())
        peak = res["machine"].get("int8_peak_gmac_s", {})
        head += "; int8 peak " + ", ".join(f"{p:.0f} GMAC/s ({n} thr)" for n, p in peak.items())
    roof = " decode MB/token (weights + KV) | of roofline | prefill of int8 peak |" if bw else ""
    lines = [
        head,
        "",
        f"| engine | decode tok/s | prefill tok/s | vs fp32 decode | peak RSS MiB | linear weights |{roof}",
        "|---|---|---|---|---|---|" + ("---|---|---|" if bw else ""),
    ]
    for name, r in res["engines"].items():
        d, p = r["decode_tok_s"], r["prefill_tok_s"]
        size = (
            f"{r['linear_bytes'] / 2**20:.1f} MiB ({r['linear_ratio_vs_fp16']:.2f}x < fp16)"
            if "linear_bytes" in r
            else f"whole GGUF {r['gguf_bytes'] / 2**20:.1f} MiB"
            if "gguf_bytes" in r
            else "-"
        )
        sp = f"{r['decode_speedup_vs_torch_fp32']:.1f}x" if "decode_speedup_vs_torch_fp32" in r else "-"
        label = f"{name} ({r['head_dtype']} head{', fp16 KV' if r.get('kv_dtype') == 'fp16' else ''})" if "head_dtype" in r else name
        row = (
            f"| {label} | {format_spread(d)} | {format_spread(p)} | {sp} | {r['peak_rss_mib']:.0f} | {size} |"
        )
        if bw:
            row += (
                f" {r['decode_bytes_per_token'] / 1e6:.1f} ({r['decode_weight_bytes_per_token'] / 1e6:.1f} + "
                f"{r['decode_kv_bytes_per_token'] / 1e6:.1f}) | {100 * r['roofline_fraction']:.0f} % of "
                f"{r['roofline_tok_s']:.0f} tok/s |"
                if "roofline_fraction" in r
                else " - | - |"
            )
            frac = r.get("prefill_peak_fraction")
            row += f" {100 * frac:.0f} % ({r['prefill_linear_gmac_s']:.0f} GMAC/s) |" if frac else " - |"
        lines.append(row)
    return "\n".join(lines)


def write_json(res: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, path)
