"""Integration check (not CI): run an exported GGUF in stock llama.cpp and compare with bitdistill.

  python benchmarks/llamacpp_check.py                       # converted SmolLM2-135M (subln=False)
  python benchmarks/llamacpp_check.py --shape qwen3-0.6b    # random Qwen3-0.6B-shaped model, speed only

Steps: make sure llama-cpp-python is importable (pip-installs it from PyPI unless --no-install: the sdist
builds llama.cpp, ~5 min on 2 cores), convert the model without SubLN, export it to GGUF, then
  1. greedy tokens for --check-tokens steps from: bitdistill's PyTorch BitLinear in eval mode (per-token
     int8 activations — the reference), the same model with fp activations, llama.cpp on the TQ export,
     llama.cpp on an F16 export of the same ternary weights (W_q·fp16(Δ), exact), and the native runtime
     (`bitdistill.runtime`) when it loads; reports the first step where each diverges from the reference;
  2. teacher-forced logits along the reference's tokens: max relative difference and argmax agreement, and
     at the first divergence the reference's top-2 logit margin (a near tie flips under tiny changes);
  3. decode / prefill tokens/s (median of --runs, min, max) for llama.cpp, and decode for PyTorch eager.
Prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bitdistill._spread import spread  # noqa: E402

PROMPT = "The capital of France is Paris. The capital of Germany is"


def ensure_llama_cpp(install: bool) -> None:
    from bitdistill.export import llamacpp

    if llamacpp.available():
        return
    if not install:
        sys.exit(
            "llama-cpp-python is not installed (pip install llama-cpp-python); rerun without --no-install"
        )
    print("installing llama-cpp-python from PyPI (builds llama.cpp from the sdist; ~5 min on 2 cores) ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "llama-cpp-python"], check=True)


def llama_cpp_version() -> str:
    import llama_cpp

    return getattr(llama_cpp, "__version__", "?")


def build_model(args, work: Path):
    """(bitdistill model dir converted with subln=False, tokenizer) for --model or --shape."""
    from bitdistill import load, load_tokenizer, save, to_bitnet
    from bitdistill.model.convert import settings_of
    from bitdistill.model.hub import load_pretrained

    out = work / ("converted-" + (args.shape or Path(str(args.model)).name))
    if out.is_dir() and (out / "model.safetensors").is_file():
        return out, load_tokenizer(out)
    if args.shape == "qwen3-0.6b":
        from transformers import AutoModelForCausalLM, Qwen3Config

        _, tok = load_pretrained("smollm2-135m")  # any byte-level BPE tokenizer: ids fit the 151936 vocab
        cfg = Qwen3Config(
            vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
            max_position_embeddings=40960, rope_theta=1000000.0,
        )  # fmt: skip
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).float()
    else:
        p = Path(str(args.model))
        if p.is_dir() and (p / "model.safetensors").is_file():
            model = load(p)
            tok = load_tokenizer(p)
            if settings_of(model).subln != "none":
                sys.exit(f"{p}: a SubLN model; stock llama.cpp runs models converted with subln=False")
            return p, tok
        model, tok = load_pretrained(args.model)
    to_bitnet(model, subln=False)
    save(model, out, tokenizer=tok)
    return out, tok


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None


def torch_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


def torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def set_fp_activations(model, on: bool) -> None:
    from bitdistill.quant import BitLinear

    for m in model.modules():
        if isinstance(m, BitLinear):
            m.quantize_activations = not on


def torch_decode_speed(model, ids: list[int], n: int, runs: int) -> dict:
    speeds = []
    for _ in range(runs):
        with torch.no_grad():
            past = None
            out = model(torch.tensor([ids]), use_cache=True)
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            t0 = time.perf_counter()
            for _ in range(n):
                out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            speeds.append(n / (time.perf_counter() - t0))
    return spread(speeds)


def runtime_tokens(model, tok, ids: list[int], n: int, work: Path, threads: int, runs: int) -> dict | None:
    """Greedy tokens and decode speed of the native runtime on the same model (2-bit, fp32 head)."""
    try:
        from bitdistill.runtime.engine import load as load_engine
        from bitdistill.runtime.pack_writer import pack_model

        packed = pack_model(model, work / "packed-fp32head", bits="2", head_dtype="fp32", tokenizer=tok)
        eng = load_engine(packed, threads=threads)
        tokens, _ = eng.generate(ids, n)
        speeds = [eng.generate(ids, 129)[1].decode_tok_s for _ in range(runs)]
    except Exception as err:  # noqa: BLE001 - the runtime is optional here; report why it was skipped
        print(f"native runtime skipped: {type(err).__name__}: {err}")
        return None
    return {
        "tokens": tokens,
        "decode_tok_s": spread(speeds),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model spec or bitdistill dir (subln=False)")
    ap.add_argument(
        "--shape", choices=["qwen3-0.6b"], default=None, help="random model of this shape instead"
    )
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--check-tokens", type=int, default=16)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--type", dest="ttype", choices=["tq2_0", "tq1_0"], default="tq2_0")
    ap.add_argument("--head", choices=["q8_0", "q4_0", "f16"], default="q8_0")
    ap.add_argument("--work", default="/tmp/bitdistill-llamacpp-check")
    ap.add_argument("--json", default=None, help="output JSON (default: WORK/llamacpp_check.json)")
    ap.add_argument("--no-install", dest="install", action="store_false")
    ap.add_argument("--torch-tokens", type=int, default=16, help="decode steps timed for PyTorch (0: skip)")
    ap.add_argument("--speed-only", action="store_true", help="skip the token/logit comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ensure_llama_cpp(args.install)

    from bitdistill import load
    from bitdistill.export import export_directory, llamacpp

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir, tok = build_model(args, work)
    model = load(model_dir)
    ids = tok(args.prompt)["input_ids"]
    n = args.check_tokens
    result: dict = {
        "model": args.shape or args.model,
        "llama_cpp_python": llama_cpp_version(),
        "threads": args.threads,
        "type": args.ttype,
        "head": args.head,
        "prompt": args.prompt,
        "prompt_ids": ids,
    }
    gguf = work / f"{model_dir.name}-{args.ttype}-{args.head}.gguf"
    rep = export_directory(model_dir, gguf, ttype=args.ttype, head=args.head)
    result["gguf_bytes"] = rep.bytes
    result["tensor_types"] = dict(rep.tensor_types)
    llm = llamacpp.open_model(gguf, n_ctx=len(ids) + max(n, args.decode_tokens) + 8, threads=args.threads)
    result["llama_cpp_prompt_ids_match"] = (
        llm.tokenize(args.prompt.encode(), add_bos=False, special=True) == ids
    )

    if (
        not args.shape and not args.speed_only
    ):  # token-level comparison only makes sense with the model's own tokenizer
        ref = torch_greedy(model, ids, n)
        ref_logits = torch_logits(model, ids + ref)
        set_fp_activations(model, True)
        fp = torch_greedy(model, ids, n)
        fp_logits = torch_logits(model, ids + ref)
        set_fp_activations(model, False)
        f16 = work / f"{model_dir.name}-f16.gguf"
        export_directory(model_dir, f16, ttype="f16", head="f16")
        llm16 = llamacpp.open_model(f16, n_ctx=len(ids) + n + 8, threads=args.threads)
        runs = {
            "torch int8-act (reference)": ref,
            "torch fp-act": fp,
            f"llama.cpp {args.ttype}/{args.head}": llamacpp.greedy(llm, ids, n),
            "llama.cpp f16 (exact W_q·Δ)": llamacpp.greedy(llm16, ids, n),
        }
        rt = runtime_tokens(model, tok, ids, n, work, args.threads, args.runs)
        if rt is not None:
            runs["native runtime (2-bit)"] = rt["tokens"]
            result["runtime_decode_tok_s"] = rt["decode_tok_s"]
        lc_logits = llamacpp.logits(llm, ids + ref)
        lc16_logits = llamacpp.logits(llm16, ids + ref)
        gen = slice(len(ids) - 1, len(ids) + n - 1)  # positions that predict the generated tokens
        comparisons = {}
        for name, got in (
            ("llama.cpp tq", lc_logits),
            ("llama.cpp f16", lc16_logits),
            ("torch fp-act", fp_logits),
        ):
            for against, want in (("torch int8-act", ref_logits), ("torch fp-act", fp_logits)):
                if name == against:
                    continue
                d = np.abs(got[gen] - want[gen]).max() / np.abs(want[gen]).max()
                agree = float((got[gen].argmax(-1) == want[gen].argmax(-1)).mean())
                comparisons[f"{name} vs {against}"] = {"max_rel_diff": float(d), "argmax_agree": agree}
        top2 = np.sort(ref_logits[gen], axis=-1)[:, -2:]
        result["reference_top2_margin"] = (top2[:, 1] - top2[:, 0]).tolist()
        result["greedy"] = {
            k: {"tokens": v, "first_divergence": first_divergence(v, ref), "text": tok.decode(v)}
            for k, v in runs.items()
        }
        result["teacher_forced"] = comparisons

    load_before = os.getloadavg()[0]
    result["llama_cpp_speed"] = llamacpp.decode_speed(llm, ids, args.decode_tokens, args.runs)
    if args.torch_tokens:
        result["torch_eager_decode_tok_s"] = torch_decode_speed(model, ids, args.torch_tokens, 1)

    # other processes on the machine skew every speed number: record the 1-minute load around the timing
    result["loadavg_1m"] = {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    print(f"\nmodel {result['model']}  llama-cpp-python {result['llama_cpp_python']}  threads {args.threads}")
    print(f"GGUF {gguf} {rep.bytes / 2**20:.1f} MiB  tensors {result['tensor_types']}")
    print(f"llama.cpp tokenizes the prompt like the HF tokenizer: {result['llama_cpp_prompt_ids_match']}")
    if "greedy" in result:
        print(f"\ngreedy {n} tokens, first divergence from the torch int8-act reference:")
        for k, v in result["greedy"].items():
            fd = v["first_divergence"]
            print(f"  {k:32s} {'identical' if fd is None else f'step {fd}':>10s}  {v['text']!r}")
        print("\nteacher-forced logits along the reference tokens:")
        for k, v in result["teacher_forced"].items():
            print(f"  {k:40s} max rel diff {v['max_rel_diff']:.3e}  argmax agree {v['argmax_agree']:.2f}")
        m = result["reference_top2_margin"]
        print(f"reference top-2 logit margin per step: min {min(m):.3f}, median {statistics.median(m):.3f}")
    s = result["llama_cpp_speed"]
    print(f"\n{'engine':40s} {'decode tok/s (median [min, max])':>36s}")
    d = s["decode_tok_s"]
    print(
        f"  {'llama.cpp ' + args.ttype + '/' + args.head:38s} {d['median']:10.1f} [{d['min']:.1f}, {d['max']:.1f}]"
    )
    if "runtime_decode_tok_s" in result:
        d = result["runtime_decode_tok_s"]
        print(
            f"  {'native runtime 2-bit, fp32 head':38s} {d['median']:10.1f} [{d['min']:.1f}, {d['max']:.1f}]"
        )
    if "torch_eager_decode_tok_s" in result:
        d = result["torch_eager_decode_tok_s"]
        print(f"  {'PyTorch eager fp32 BitLinear':38s} {d['median']:10.1f} [{d['min']:.1f}, {d['max']:.1f}]")
    p = s["prefill_tok_s"]
    print(f"llama.cpp prefill ({len(ids)} tokens): {p['median']:.1f} tok/s")
    la = result["loadavg_1m"]
    print(f"1-min load average {la['before']:.2f} -> {la['after']:.2f} on {la['cpus']} CPUs")
    out = Path(args.json or work / "llamacpp_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
