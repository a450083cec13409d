"""The decode engine: a packed model bound to the native library, with a KV cache and a generation loop.

Python only hands token ids in and gets logits back; each call runs a whole forward step (every layer,
attention over the cache, the LM head) in native code. Prompts are prefilled in batches (the GEMM path).
"""

from __future__ import annotations

import ctypes as C
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .._threads import check_threads
from ..errors import BitDistillError
from ..quant.bit_layout import BLOCK, ROWS, packed_2bit_shape
from .dense_dtypes import DENSE, dense_scale_name
from .native import (
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_SILU,
    SCALE_CHANNEL,
    SCALE_GROUP,
    SCALE_TENSOR,
    Layer,
    Linear,
    Model,
    default_threads,
    fptr,
    lib,
    ptr,
    usable_cores,
)
from .packed import PackedModel, _linear_dims, load_packed
from .sampling import SamplingParams, sample

_ACTS = {"silu": ACT_SILU, "gelu_tanh": ACT_GELU_TANH, "gelu": ACT_GELU}
_SCALES = {"tensor": SCALE_TENSOR, "channel": SCALE_CHANNEL, "group": SCALE_GROUP}
PREFILL_CHUNK = 128
KV_DTYPES = ("fp32", "fp16")
GREEDY = SamplingParams()


def _dense_scale(t: dict[str, np.ndarray], name: str, dtype: str) -> np.ndarray | None:
    """Row scales of an int8 matrix, group scales of a q4 one (named by the format), None for float dtypes."""
    return t.get(dense_scale_name(name, dtype))


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        # the first new token comes out of the prefill; decode steps produce the rest
        steps = max(self.new_tokens - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 else 0.0


SHORT_CALL = 32  # tokens: shorter forward calls keep their own ThreadPicker records (call_kind)


def call_kind(tokens: int) -> str:
    """The ThreadPicker kind of a forward call of `tokens` tokens. Its records compare seconds per token,
    which a call's fixed costs (every weight streamed once, the head's rows) inflate for a short call: the
    3-token prompt prefix a classification run computes first, timed on two threads against a 512-token batch
    on one, made the whole run go on one thread at ~55 % of its speed. So one token (decode), short calls and
    long ones (a prompt's prefill, classification batches) are compared only among their own kind."""
    return "decode" if tokens == 1 else "short" if tokens < SHORT_CALL else "prefill"


class ThreadPicker:
    """How many of the engine's threads a forward call uses: all of them, unless one thread has recently
    been clearly faster for that kind of call. On a machine where another process holds a core, every
    barrier of a step waits for the thread that shares that core (a scheduling round trip each, ~150 per
    decode token), and one thread beats two; on idle cores two win. Every `PROBE`-th call of a kind times
    all threads and the next times one (all first: a kind's first call, often its only one — a prompt's
    prefill, a one-batch classification — runs as many threads as asked); each count's record is the median seconds per token of its last
    `WINDOW` calls, and the faster count runs the calls in between, one thread only when 1 - MARGIN faster.
    A record of single calls was too noisy on a shared VM: with an average, a few slow 2-thread tokens on
    idle cores handed a quarter of the decode calls to one thread (bench --threads 2). With a core busy,
    one thread is now only ~10 % faster (the futex barrier and the work dispenser let two degrade
    gracefully), so the margin is 5 %. Results never depend on the count (rows are computed whole by one
    thread), so switching is free of numerical effects. `used` counts the picks per (kind, threads), for
    benchmarks to report (`picks`).

    Probes back off while the records keep naming the same count: at each pair the gap to the next one
    doubles (x8 when the slower count took at least twice as long) up to PROBE_MAX calls, and it is PROBE
    again while a record is missing or when the faster count changes. With a core busy, a 2-thread probe
    costs ~3 decode tokens, and a probe every 32 calls made two threads ~7 % slower than one (bench
    --scaling, AVX-512 VM)."""

    PROBE = 32
    PROBE_MAX = 512
    WINDOW = 5
    MARGIN = 0.95

    def __init__(self, threads: int) -> None:
        self.max = threads
        self.calls: dict[str, int] = {}
        self.recent: dict[tuple[str, int], deque[float]] = {}
        self.used: dict[tuple[str, int], int] = {}
        self.next_probe: dict[str, int] = {}  # the call that starts a kind's next probe pair
        self.gap: dict[str, int] = {}  # calls between its probe pairs
        self.faster: dict[str, int | None] = {}  # the count the records named faster at the last pair

    def threads(self, kind: str) -> int:
        n = self._pick(kind)
        self.used[(kind, n)] = self.used.get((kind, n), 0) + 1
        return n

    def picks(self, since: dict[tuple[str, int], int] | None = None) -> dict[str, int]:
        """Calls per "kind threads" (JSON keys), counted from a copy of `used` taken earlier (default: all)."""
        since = since or {}
        return {f"{kind} {n}": c - since.get((kind, n), 0) for (kind, n), c in self.used.items()}

    def sec_per_token(self, kind: str, threads: int) -> float | None:
        """The record of `threads` for `kind`: the median of its last WINDOW calls (None before any)."""
        r = self.recent.get((kind, threads))
        return statistics.median(r) if r else None

    def _pick(self, kind: str) -> int:
        if self.max == 1:
            return 1
        i = self.calls[kind] = self.calls.get(kind, -1) + 1
        start = self.next_probe.get(kind, 0)
        if i == start:  # a probe pair: all threads now, one thread on the next call
            self._schedule(kind, i)
            return self.max
        if i == start - self.gap[kind] + 1:
            return 1
        return self._faster(kind)

    def _faster(self, kind: str) -> int:
        one, full = self.sec_per_token(kind, 1), self.sec_per_token(kind, self.max)
        return 1 if one is not None and full is not None and one < self.MARGIN * full else self.max

    def _schedule(self, kind: str, i: int) -> None:
        """At the start of a probe pair: the gap to the next one, from the records so far."""
        one, full = self.sec_per_token(kind, 1), self.sec_per_token(kind, self.max)
        won = None if one is None or full is None else self._faster(kind)
        if won is None or self.faster.get(kind) not in (None, won):
            gap = self.PROBE
        else:
            clear = max(one, full) >= 2 * min(one, full)
            gap = min(self.gap.get(kind, self.PROBE) * (8 if clear else 2), self.PROBE_MAX)
        self.faster[kind], self.gap[kind], self.next_probe[kind] = won, gap, i + gap

    def record(self, kind: str, threads: int, sec_per_token: float) -> None:
        self.recent.setdefault((kind, threads), deque(maxlen=self.WINDOW)).append(sec_per_token)


class Engine:
    """A packed model ready to run. `forward` appends tokens to the KV cache and returns their logits."""

    def __init__(self, packed: PackedModel, threads: int | None = None, kv_dtype: str = "fp32") -> None:
        if kv_dtype not in KV_DTYPES:
            raise BitDistillError(f"kv_dtype {kv_dtype!r}: choose one of {', '.join(KV_DTYPES)}")
        self.kv16 = int(kv_dtype == "fp16")
        self.packed = packed
        self.arch = a = packed.arch
        # validated (1 to 4 per core), then clamped to the cores this process may use: a thread without a core
        # of its own only makes the others wait for it at every barrier
        self.requested_threads = default_threads() if threads is None else check_threads(threads, "threads")
        self.threads = min(self.requested_threads, usable_cores())
        t = packed.tensors
        self._arrays = t  # every pointer below points into these arrays: keep them alive with the engine
        self._layers = (Layer * a["n_layers"])()
        dims = _linear_dims(a)
        for i in range(a["n_layers"]):
            lay = self._layers[i]
            for name, (n, k) in dims.items():
                p = f"layers.{i}.{name}"
                g, kp = packed_2bit_shape(n, k)
                w = t[f"{p}.packed"]
                assert w.shape == (g, kp) and w.dtype == np.uint8 and w.flags["C_CONTIGUOUS"]
                setattr(
                    lay,
                    name,
                    Linear(
                        w=w.ctypes.data_as(C.POINTER(C.c_uint8)),
                        n=n, k=k, np=g * ROWS, kp=kp,
                        scale_kind=_SCALES[a["granularity"]],
                        group_blocks=a["group_size"] // BLOCK if a["granularity"] == "group" else 0,
                        scale=fptr(t[f"{p}.scale"]), bias=fptr(t.get(f"{p}.bias")),
                        sub_norm=fptr(t.get(f"{p}.sub_norm")),
                    ),
                )  # fmt: skip
            p = f"layers.{i}"
            lay.in_norm = fptr(t[f"{p}.attn_norm"])
            lay.pre_ffn_norm = fptr(t[f"{p}.ffn_norm"])
            lay.post_attn_norm = fptr(t.get(f"{p}.post_attn_norm"))
            lay.post_ffn_norm = fptr(t.get(f"{p}.post_ffn_norm"))
            lay.q_norm = fptr(t.get(f"{p}.q_norm"))
            lay.k_norm = fptr(t.get(f"{p}.k_norm"))
            rope = a["layer_rope"][i]
            lay.inv_freq = fptr(t[f"rope.{rope}.inv_freq"])
            lay.rope_scale = a["rope_scale"][rope]
            lay.window = a["layer_window"][i]
        head_key = "embed" if a["tied"] else "head"
        head_dtype = a["embed_dtype" if a["tied"] else "head_dtype"]
        self._model = Model(
            n_layers=a["n_layers"], hidden=a["hidden"], n_heads=a["n_heads"], n_kv=a["n_kv"],
            head_dim=a["head_dim"], inter=a["inter"], vocab=a["vocab"], act=_ACTS[a["act"]],
            eps=a["eps"], attn_scale=a["attn_scale"], embed_scale=a["embed_scale"],
            final_softcap=a["final_softcap"], attn_softcap=a["attn_softcap"],
            embed_dtype=DENSE[a["embed_dtype"]].code, head_dtype=DENSE[head_dtype].code,
            embed=ptr(t["embed"]), embed_rscale=fptr(_dense_scale(t, "embed", a["embed_dtype"])),
            head=ptr(t[head_key]), head_rscale=fptr(_dense_scale(t, head_key, head_dtype)),
            final_norm=fptr(t["norm"]), layers=self._layers,
        )  # fmt: skip
        self._pick = ThreadPicker(self.threads)
        self._state: int | None = None
        self._state_seq = 0
        self._state_t = 0
        self.pos = 0

    # -- state -------------------------------------------------------------------------------------------

    def reset(self, max_seq: int, max_batch: int = PREFILL_CHUNK) -> None:
        """Start a new sequence with room for `max_seq` tokens (reallocates the KV cache when it must grow)."""
        if max_seq < 1:
            raise BitDistillError(f"max_seq={max_seq}: need room for at least one token")
        max_batch = max(1, min(max_batch, max_seq))
        if self._state is None or max_seq > self._state_seq or max_batch > self._state_t:
            self._free()
            state = lib().bd_state_new(C.byref(self._model), max_seq, max_batch, self.threads, self.kv16)
            if not state:
                need = lib().bd_state_bytes(C.byref(self._model), max_seq, self.kv16) / 2**20
                raise BitDistillError(f"out of memory allocating a {max_seq}-token KV cache ({need:.0f} MiB)")
            self._state, self._state_seq, self._state_t = state, max_seq, max_batch
        self.pos = 0

    def _free(self) -> None:
        if self._state is not None:
            lib().bd_state_free(self._state)
            self._state = None

    def __del__(self) -> None:
        try:
            self._free()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- forward -----------------------------------------------------------------------------------------

    def forward(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append `tokens` at the current position; logits [len, vocab] (all_logits) or [vocab] (last)."""
        if self._state is None:
            self.reset(max(len(tokens), 1) + 256)
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise BitDistillError("forward: no tokens given")
        v = self.arch["vocab"]
        if ids.min() < 0 or ids.max() >= v:
            raise BitDistillError(f"token id out of range [0, {v}): the tokenizer does not match the model")
        if self.pos + ids.size > self._state_seq:
            raise BitDistillError(
                f"context full: {self.pos} + {ids.size} tokens > {self._state_seq}; call reset() with a larger max_seq"
            )
        ids32 = ids.astype(np.int32)
        outs = []
        kind = call_kind(ids32.size)
        nth = self._pick.threads(kind)
        t0 = time.perf_counter()
        for start in range(0, ids32.size, self._state_t):
            chunk = np.ascontiguousarray(ids32[start : start + self._state_t])
            last = start + chunk.size == ids32.size
            rows = chunk.size if all_logits else 1
            out = np.empty((rows, v), np.float32)
            if all_logits or last:
                rc = lib().bd_forward(
                    C.byref(self._model), self._state, ptr(chunk), chunk.size, self.pos, ptr(out),
                    int(all_logits), nth,
                )  # fmt: skip
            else:  # an inner prefill chunk: its logits are not needed, compute only the last row's
                rc = lib().bd_forward(
                    C.byref(self._model),
                    self._state,
                    ptr(chunk),
                    chunk.size,
                    self.pos,
                    ptr(out),
                    0,
                    nth,
                )
            if rc != 0:
                raise BitDistillError(f"native forward rejected its arguments (code {rc})")
            self.pos += chunk.size
            if all_logits or last:
                outs.append(out)
        self._pick.record(kind, nth, (time.perf_counter() - t0) / ids32.size)
        return np.concatenate(outs) if all_logits else outs[-1][0]

    def forward_seqs(
        self, tokens: np.ndarray, pos: np.ndarray, seq0: np.ndarray, out_rows: np.ndarray
    ) -> np.ndarray:
        """Tokens of several sequences in one native call (padding-free batching): token i sits at position
        pos[i] of the sequence whose KV rows start at cache slot seq0[i], writes its keys/values to slot
        seq0[i] + pos[i] and attends only to slots seq0[i] .. seq0[i] + pos[i]. Returns the logits of the
        tokens listed in out_rows ([len(out_rows), vocab]; none: the call only fills the cache, and skips the
        last layer's rows after its keys/values and the head). The cache must hold every slot (see reset):
        sequences laid side by side in the cache never see each other."""
        if self._state is None:
            raise BitDistillError("forward_seqs: call reset(max_seq, max_batch) first to size the cache")
        arrays = [np.ascontiguousarray(a, dtype=np.int32).reshape(-1) for a in (tokens, pos, seq0, out_rows)]
        tokens, pos, seq0, out_rows = arrays
        n = tokens.size
        if n == 0:
            raise BitDistillError("forward_seqs: no tokens given")
        if pos.size != n or seq0.size != n:
            raise BitDistillError(f"forward_seqs: {n} tokens but {pos.size} positions and {seq0.size} seq0")
        v = self.arch["vocab"]
        if tokens.min() < 0 or tokens.max() >= v:
            raise BitDistillError(f"token id out of range [0, {v}): the tokenizer does not match the model")
        if n > self._state_t or pos.min() < 0 or seq0.min() < 0 or int((seq0 + pos).max()) >= self._state_seq:
            raise BitDistillError(
                f"forward_seqs: {n} tokens up to cache slot {int((seq0 + pos).max())} do not fit the state "
                f"({self._state_t} tokens per call, {self._state_seq} slots); call reset() larger"
            )
        if out_rows.size and (out_rows.min() < 0 or out_rows.max() >= n):
            raise BitDistillError(f"forward_seqs: out_rows must index the {n} tokens")
        out = np.empty((out_rows.size, v), np.float32)
        kind = call_kind(n)
        nth, t0 = self._pick.threads(kind), time.perf_counter()
        rc = lib().bd_forward_seqs(
            C.byref(self._model), self._state, ptr(tokens), n, ptr(pos), ptr(seq0), ptr(out_rows),
            out_rows.size, ptr(out), nth,
        )  # fmt: skip
        if rc != 0:
            raise BitDistillError(f"native forward rejected its arguments (code {rc})")
        self._pick.record(kind, nth, (time.perf_counter() - t0) / n)
        return out

    def copy_kv(self, src: int, dst: int, n: int) -> None:
        """Copy the n cached key/value rows at slots src.. to slots dst.. in every layer (overlap allowed): a
        prefix shared by several sequences of a forward_seqs batch, computed once."""
        if self._state is None:
            raise BitDistillError("copy_kv: call reset(max_seq, max_batch) first to size the cache")
        if lib().bd_copy_kv(C.byref(self._model), self._state, src, dst, n) != 0:
            raise BitDistillError(
                f"copy_kv: slots {src}..{src + n - 1} -> {dst}..{dst + n - 1} leave the {self._state_seq}-slot cache"
            )

    # -- generation ----------------------------------------------------------------------------------------

    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        params: SamplingParams = GREEDY,
        stop_ids: Sequence[int] = (),
        stats: GenerationStats | None = None,
    ) -> Iterator[int]:
        """Yield generated token ids one at a time (prefill in batches, then one native call per token)."""
        prompt = list(prompt_ids)
        if not prompt:
            raise BitDistillError("the prompt is empty: give at least one token")
        stats = stats if stats is not None else GenerationStats()
        stats.prompt_tokens = len(prompt)
        self.reset(len(prompt) + max_new_tokens)
        rng = np.random.default_rng(params.seed)
        stop = set(int(s) for s in stop_ids)
        t0 = time.perf_counter()
        logits = self.forward(prompt)
        stats.prefill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for i in range(max_new_tokens):
            tok = sample(logits, params, rng)
            stats.new_tokens += 1
            stats.decode_s = time.perf_counter() - t1
            yield tok
            if tok in stop or i == max_new_tokens - 1:
                break
            logits = self.forward([tok])
        stats.decode_s = time.perf_counter() - t1

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        params: SamplingParams = GREEDY,
        stop_ids: Sequence[int] = (),
        on_token: Callable[[int], None] | None = None,
    ) -> tuple[list[int], GenerationStats]:
        """All generated ids (stopping after a stop id) and timing stats."""
        stats = GenerationStats()
        out = []
        for tok in self.stream(prompt_ids, max_new_tokens, params, stop_ids, stats):
            out.append(tok)
            if on_token is not None:
                on_token(tok)
        return out, stats


def eos_ids(arch: dict) -> list[int]:
    """The end-of-sequence token ids a packed model's config names (one id or a list)."""
    eos = arch.get("eos_token_id")
    if isinstance(eos, int):
        return [eos]
    return [e for e in eos if isinstance(e, int)] if isinstance(eos, list) else []


def load(path: str | os.PathLike, threads: int | None = None, kv_dtype: str = "fp32") -> Engine:
    """Load and validate a packed directory and bind it to the native runtime: one call, ready to run.

    kv_dtype "fp32" (default) keeps the KV cache exact (logits match PyTorch to float noise); "fp16" halves
    the cache's memory and the bytes attention reads per token, at fp16 rounding of keys and values."""
    return Engine(load_packed(path), threads=threads, kv_dtype=kv_dtype)


def load_tokenizer(path: str | os.PathLike):
    """The `tokenizers.Tokenizer` saved in a packed directory (tokenizer.json)."""
    from pathlib import Path

    from tokenizers import Tokenizer

    f = Path(path) / "tokenizer.json"
    if not f.is_file():
        raise BitDistillError(
            f"{f}: missing; pack the model with its tokenizer (the source directory had none)"
        )
    try:
        return Tokenizer.from_file(str(f))
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception
        raise BitDistillError(f"{f}: unreadable tokenizer ({err}); re-run bitdistill pack") from None
