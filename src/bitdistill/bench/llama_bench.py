"""llama.cpp's own `llama-bench` binary as a `bitdistill bench` engine (`llama-bench-tq2_0`).

The same workload as the other engines, measured by llama.cpp's tool rather than through a Python binding:
  prefill  `-p PREFILL -n 0`: one batch of PREFILL prompt tokens from an empty context;
  decode   `-p 0 -n DECODE -d PREFILL`: DECODE single-token steps after an untimed PREFILL-token context,
           so decode positions are PREFILL..PREFILL+DECODE-1 as in our runtime worker.
Each is run `runs` times after llama-bench's own warm-up; `samples_ts` (tokens/s per repetition) are the
per-run figures. Peak RSS is the larger of the two llama-bench processes' (os.wait4 gives a child's own).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..env import user_environ
from ..errors import BitDistillError

ENGINE_PREFIX = "llama-bench-"


def find_llama_bench(path: str | None) -> Path | None:
    """The llama-bench binary: `path` if given (a one-line error when it is not an executable file), else
    `llama-bench` on PATH, else None (the engine is then skipped)."""
    if path is None:
        found = shutil.which("llama-bench")
        return Path(found) if found else None
    p = Path(path)
    if not (p.is_file() and os.access(p, os.X_OK)):
        raise BitDistillError(
            f"--llama-bench {path}: not an executable file; give the path of llama.cpp's llama-bench binary "
            "(build it with `cmake --build build --target llama-bench`)"
        )
    return p


def parse_samples(stdout: str, what: str) -> list[float]:
    """tokens/s per repetition from llama-bench's `-o json` output (a list with one test object)."""
    try:
        tests = json.loads(stdout)
        return [float(v) for v in tests[0]["samples_ts"]]
    except (ValueError, LookupError, TypeError) as e:
        raise RuntimeError(f"llama-bench {what}: unexpected output ({e}): {stdout[:500]!r}") from None


def _run(cmd: list[str], what: str, timeout: float) -> tuple[list[float], float]:
    """(tokens/s per repetition, peak RSS MiB) of one llama-bench invocation."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=user_environ())
        try:
            _, status, usage = _wait4(proc.pid, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"llama-bench {what}: no result within {timeout:.0f}s") from None
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"llama-bench {what} failed ({proc.returncode}): {err.read()[-2000:]}")
        return parse_samples(out.read(), what), usage.ru_maxrss / 1024.0


def _wait4(pid: int, timeout: float):
    """os.wait4 with a deadline (polled: wait4 itself has no timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        wpid, status, usage = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            return wpid, status, usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(str(pid), timeout)
        time.sleep(0.05)


def commands(binary: Path, gguf: Path, threads: int, prefill: int, decode: int, runs: int) -> dict[str, list[str]]:
    """The two llama-bench command lines (prefill, decode) of one engine measurement."""
    base = [str(binary), "-m", str(gguf), "-t", str(threads), "-r", str(runs), "-o", "json"]
    return {
        "prefill": [*base, "-p", str(prefill), "-n", "0"],
        "decode": [*base, "-p", "0", "-n", str(decode), "-d", str(prefill)],
    }


def run_llama_bench(
    binary: Path, gguf: Path, threads: int, prefill: int, decode: int, runs: int, timeout: float = 3600
) -> dict:
    """The bench worker fields (per-run `decode` / `prefill` tokens/s, `peak_rss_mib`) measured by llama-bench."""
    res: dict = {"commands": {}}
    rss = 0.0
    for what, cmd in commands(binary, gguf, threads, prefill, decode, runs).items():
        res[what], peak = _run(cmd, what, timeout)
        res["commands"][what] = " ".join(cmd)
        rss = max(rss, peak)
    res["peak_rss_mib"] = rss
    return res
