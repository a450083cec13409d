"""Loopback load test of `bitdistill serve`: concurrent clients mixing generation and classification.

    python benchmarks/bench_serve.py PACKED                      # 32 clients x 60 s, the issue's setting
    python benchmarks/bench_serve.py PACKED --clients 4 --duration 10 --classify-duration 5

Three phases, one server process started by this script (`bitdistill serve`, loopback only):
  1. in-process baseline: the runtime's batched label-word scorer over SST-2 dev sentences in one call, as
     `bitdistill classify` runs them (no server), texts/s (and the per-prompt scorer's, for reference);
  2. classify only: every client sends /v1/classify with --batch sentences per request, texts/s through
     the server, and its ratio to (1);
  3. mixed: every client picks /v1/completions (--max-tokens, sampled) or /v1/classify at random
     (--classify-share), for --duration seconds; requests/s, p50/p99 latency per kind, generated tokens/s,
     status counts (any 5xx is a failure), the server's RSS over time and its peak (VmHWM).
Clients share the machine with the server, as any loopback test does. Prints a markdown table and writes
JSON (default benchmarks/results/serve-<model>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from _verb import RESULTS

from bitdistill.env import SIMD, set_openmp_defaults

# As `bitdistill classify` and the server: the baseline must not get spinning OpenMP threads that the CLI
# and the server do not have. Set before the runtime loads.
set_openmp_defaults()


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("packed", help="packed model directory (bitdistill pack --out)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of mixed load")
    p.add_argument("--classify-duration", type=float, default=30.0, help="seconds of classify-only load")
    p.add_argument(
        "--classify-share", type=float, default=0.5, help="fraction of mixed requests that classify"
    )
    p.add_argument("--batch", type=int, default=8, help="texts per /v1/classify request")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each completion")
    p.add_argument("--baseline-texts", type=int, default=256, help="texts scored in-process for the baseline")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    for name in ("clients", "batch", "max_tokens", "baseline_texts"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not (args.duration > 0 and args.classify_duration > 0 and 0 <= args.classify_share <= 1):
        p.error("durations must be > 0 and --classify-share in [0, 1]")
    return args


def sst2_texts() -> list[str]:
    import gzip

    from bitdistill.data.builtin import resolve

    with gzip.open(resolve("builtin:sst2") / "dev.tsv.gz", "rt") as f:
        return [line.split("\t")[0] for line in f.read().splitlines()[1:]]


def baseline(args, prompts: list[str]) -> dict:
    """Texts per second of the runtime's scorer in this process: the figure the server is compared with.
    `batched` scores all the texts in one call (score_label_words_batch: many prompts per forward, as
    `bitdistill classify` does); `one_by_one` is the per-prompt scorer, for reference."""
    from bitdistill.data.tasks import get_task
    from bitdistill.runtime.engine import load, load_tokenizer
    from bitdistill.runtime.scoring import score_label_words, score_label_words_batch

    engine, tok = load(args.packed, threads=args.threads), load_tokenizer(args.packed)
    words = get_task("sst2").label_words
    texts = prompts[: args.baseline_texts]
    score_label_words_batch(engine, tok, prompts[:16], words)  # warm-up: first-touch of the weights, allocator
    t0 = time.perf_counter()
    score_label_words_batch(engine, tok, texts, words)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in texts[:32]:
        score_label_words(engine, tok, p, words)
    one = (time.perf_counter() - t0) / min(32, len(texts))
    threads = engine.threads
    del engine
    gc.collect()
    return {
        "texts": len(texts),
        "seconds": batched,
        "texts_per_s": len(texts) / batched,
        "one_by_one_texts_per_s": 1 / one,
        "threads": threads,
    }


def rss_mib(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def start_server(args) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "bitdistill.cli", "serve", args.packed, "--port", str(port), "--task", "sst2",
           "--queue-size", str(max(64, 2 * args.clients)), "--log-level", "warning"]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become healthy in 120 s")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


async def load_phase(url: str, args, texts: list[str], duration: float, share: float, pid: int) -> dict:
    import httpx

    records: list[dict] = []
    rss: list[tuple[float, float]] = []
    stop_at = time.monotonic() + duration
    t0 = time.monotonic()

    async def client(i: int, http: httpx.AsyncClient) -> None:
        r = random.Random(args.seed * 1000 + i)
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            rec: dict = {"kind": "classify" if r.random() < share else "generate"}
            try:
                if rec["kind"] == "classify":
                    batch = [texts[r.randrange(len(texts))] for _ in range(args.batch)]
                    resp = await http.post("/v1/classify", json={"input": batch})
                    rec["texts"] = args.batch
                else:
                    body = {"prompt": texts[r.randrange(len(texts))], "max_tokens": args.max_tokens,
                            "temperature": 0.8, "seed": r.randrange(2**31)}  # fmt: skip
                    resp = await http.post("/v1/completions", json=body)
                rec["status"] = resp.status_code
                if resp.status_code == 200 and rec["kind"] == "generate":
                    rec["tokens"] = resp.json()["usage"]["completion_tokens"]
            except httpx.HTTPError as err:
                rec["status"], rec["error"] = 0, type(err).__name__
            rec["latency_s"] = time.perf_counter() - start
            records.append(rec)

    async def sample_rss() -> None:
        while time.monotonic() < stop_at:
            rss.append((time.monotonic() - t0, rss_mib(pid)["VmRSS"]))
            await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        sampler = asyncio.ensure_future(sample_rss())
        await asyncio.gather(*(client(i, http) for i in range(args.clients)))
        await sampler
    elapsed = time.monotonic() - t0
    rss.append((elapsed, rss_mib(pid)["VmRSS"]))
    ok = [r for r in records if r["status"] == 200]
    out = {
        "seconds": elapsed,
        "requests": len(records),
        "requests_per_s": len(ok) / elapsed,
        "status_counts": {
            str(s): sum(r["status"] == s for r in records) for s in sorted({r["status"] for r in records})
        },
        "errors_5xx": sum(r["status"] >= 500 for r in records),
        "transport_errors": sum(r["status"] == 0 for r in records),
        "rss_mib_samples": rss,
    }
    for kind in ("generate", "classify"):
        lat = [r["latency_s"] for r in ok if r["kind"] == kind]
        out[kind] = {"requests": len(lat), "p50_s": pct(lat, 0.5), "p99_s": pct(lat, 0.99)}
    out["generated_tokens_per_s"] = sum(r.get("tokens", 0) for r in ok) / elapsed
    out["classified_texts_per_s"] = sum(r.get("texts", 0) for r in ok) / elapsed
    return out


def machine() -> dict:
    from bitdistill.runtime.native import SIMD_NAMES, simd_level

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {"cpus": os.cpu_count(), "simd": SIMD_NAMES[simd_level()], "BITDISTILL_SIMD": os.environ.get(SIMD),
            "cpu_flags": sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx512vnni"}),
            "loadavg": list(os.getloadavg())}  # fmt: skip


def table(res: dict) -> str:
    m, c, b = res["mixed"], res["classify_only"], res["baseline"]
    f = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    rows = [
        "| phase | requests/s | p50 s | p99 s | tokens/s | texts/s | 5xx | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
        f"| in-process classify, batched (baseline) | - | - | - | - | {f(b['texts_per_s'])} | - | - |",
        f"| in-process classify, one prompt per call | - | - | - | - | {f(b['one_by_one_texts_per_s'])} | - | - |",
        f"| server, classify only ({res['config']['clients']} clients, batch {res['config']['batch']}) | "
        f"{f(c['requests_per_s'])} | {f(c['classify']['p50_s'])} | {f(c['classify']['p99_s'])} | - | "
        f"{f(c['classified_texts_per_s'])} | {c['errors_5xx']} | - |",
        f"| server, mixed: generate | {f(m['generate']['requests'] / m['seconds'])} | {f(m['generate']['p50_s'])} | "
        f"{f(m['generate']['p99_s'])} | {f(m['generated_tokens_per_s'], 1)} | - | - | - |",
        f"| server, mixed: classify | {f(m['classify']['requests'] / m['seconds'])} | {f(m['classify']['p50_s'])} | "
        f"{f(m['classify']['p99_s'])} | - | {f(m['classified_texts_per_s'])} | - | - |",
        f"| server, mixed: all | {f(m['requests_per_s'])} | - | - | {f(m['generated_tokens_per_s'], 1)} | "
        f"{f(m['classified_texts_per_s'])} | {m['errors_5xx']} | {f(res['server_peak_rss_mib'], 0)} |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sentences = sst2_texts()
    from bitdistill.data.tasks import get_task, render

    template = get_task("sst2").template
    prompts = [render(template, s.strip())[0] for s in sentences]
    res: dict = {"model": Path(args.packed).resolve().name, "machine": machine(),
                 "config": {k: v for k, v in vars(args).items() if k not in ("out",)}}  # fmt: skip
    print(f"baseline: scoring {args.baseline_texts} texts in-process ...", file=sys.stderr)
    res["baseline"] = baseline(args, prompts)
    proc, url = start_server(args)
    try:
        print(f"classify only: {args.clients} clients x {args.classify_duration:.0f} s ...", file=sys.stderr)
        res["classify_only"] = asyncio.run(
            load_phase(url, args, sentences, args.classify_duration, 1.0, proc.pid)
        )
        print(f"mixed: {args.clients} clients x {args.duration:.0f} s ...", file=sys.stderr)
        res["mixed"] = asyncio.run(
            load_phase(url, args, sentences, args.duration, args.classify_share, proc.pid)
        )
        res["server_peak_rss_mib"] = rss_mib(proc.pid)["VmHWM"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    samples = [v for _, v in res["mixed"]["rss_mib_samples"]]
    quarter = samples[len(samples) // 4] if samples else None
    res["mixed"]["rss_growth_after_first_quarter_mib"] = samples[-1] - quarter if samples else None
    res["classify_vs_in_process"] = (
        res["classify_only"]["classified_texts_per_s"] / res["baseline"]["texts_per_s"]
    )
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    out = Path(args.out) if args.out else RESULTS / f"serve-{res['model']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    print(f"\nclassify through the server / in-process: {res['classify_vs_in_process']:.2f}; "
          f"RSS growth after the first quarter of the mixed phase: {res['mixed']['rss_growth_after_first_quarter_mib']:+.1f} MiB; "
          f"SIMD {res['machine']['simd']}, {res['machine']['cpus']} CPUs; JSON: {out}")  # fmt: skip
    return 1 if res["mixed"]["errors_5xx"] or res["classify_only"]["errors_5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
