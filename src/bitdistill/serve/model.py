"""The served model: one engine and tokenizer, loaded once, and the two jobs the worker runs on them.

Prompts are encoded as `bitdistill generate` encodes them (the tokenizer's special tokens for completions;
none added for chat, whose template writes them itself, as `apply_chat_template(tokenize=True)` does), and
sampling, stopping at EOS and label-word scoring are the runtime's own functions, so a request answers
exactly what the CLI and the Python API answer for the same input and seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.task_flags import label_continuations, parse_labels, task_from_flags, unescape
from ..data.tasks import Task, get_task, render
from ..errors import BitDistillError
from ..runtime.engine import Engine, eos_ids, load, load_tokenizer
from ..runtime.sampling import SamplingParams
from ..runtime.scoring import check_words, encode, iter_label_word_scores
from .chat import load_chat_template
from .errors import APIError
from .text import Detokenizer, StopScanner
from .worker import Job


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "cancelled" (the client left)
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ClassifyDefaults:
    """Label words and template used when a /v1/classify request names none (from --task/--labels/--template)."""

    labels: list[str] | None = None
    template: str | None = None
    pair: bool = False


def defaults_from_task(
    task: str | None, labels: str | None = None, template: str | None = None, recorded: Task | None = None
) -> ClassifyDefaults:
    """Server-wide classify settings from the CLI's flags and the model's recorded task, read as `classify`
    reads them. A model recording a summarization task serves generation: it gives no classify defaults."""
    if recorded is not None and recorded.kind != "classification":
        recorded = None
    words, tmpl = parse_labels(labels), unescape(template) if template else None
    if task or recorded is not None or (words and tmpl):
        t = task_from_flags(task, labels, template, recorded=recorded)
        return ClassifyDefaults(list(t.label_words), t.template, bool(t.text_pair_columns))
    # One of the two alone: a request supplies the other.
    return ClassifyDefaults(words, tmpl, bool(tmpl and "{text_pair}" in tmpl))


class ServedModel:
    def __init__(self, packed_dir: str | os.PathLike, threads: int | None = None, name: str | None = None,
                 classify: ClassifyDefaults | None = None, kv_dtype: str = "fp32") -> None:  # fmt: skip
        self.path = Path(packed_dir)
        self.engine: Engine = load(self.path, threads=threads, kv_dtype=kv_dtype)
        self.tok = load_tokenizer(self.path)
        self.chat = load_chat_template(self.path)
        self.name = name or self.path.resolve().name
        self.ctx = int(self.engine.arch.get("max_position_embeddings") or 0)
        self.eos = eos_ids(self.engine.arch)
        self.classify_defaults = classify or ClassifyDefaults()
        if self.classify_defaults.labels:
            check_words(self.tok, self.classify_defaults.labels)

    # -- prompts (on the event loop: cheap, and errors become 400s before anything is queued) -------------

    def completion_ids(self, prompt: str) -> list[int]:
        return self._nonempty(encode(self.tok, prompt))

    def completion_prompts(self, prompt: str | list, max_prompts: int) -> list[list[int]]:
        """Token ids of each prompt of a completions request: OpenAI's `prompt` is a string, a list of strings,
        a list of token ids, or a list of such lists."""
        if isinstance(prompt, str):
            return [self.completion_ids(prompt)]
        if prompt and all(isinstance(p, int) for p in prompt):
            prompt = [prompt]
        if not 1 <= len(prompt) <= max_prompts:
            raise APIError(400, f"\"prompt\" holds {len(prompt)} prompts; send 1 to {max_prompts} (this server's "
                           "--max-prompts)", param="prompt", code="invalid_value")  # fmt: skip
        return [self.completion_ids(p) if isinstance(p, str) else self._token_ids(p) for p in prompt]

    def _token_ids(self, ids: list[int]) -> list[int]:
        vocab = int(self.engine.arch["vocab"])
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} in \"prompt\" is outside this model's vocabulary (0 to {vocab - 1})",
                           param="prompt", code="invalid_value")  # fmt: skip
        return self._nonempty(list(ids))

    def chat_ids(self, messages: list[dict]) -> list[int]:
        if self.chat is None:
            raise APIError(400, f"model {self.name!r} has no chat template (its tokenizer files define none); "
                           "use /v1/completions with a plain prompt", param="messages",
                           code="no_chat_template")  # fmt: skip
        return self._nonempty(encode(self.tok, self.chat.render(messages), special=False))

    @staticmethod
    def _nonempty(ids: list[int]) -> list[int]:
        if not ids:
            raise APIError(400, "the prompt encodes to no tokens; give some text", param="prompt")
        return ids

    def budget(self, n_prompt: int, max_tokens: int | None, default: int, limit: int) -> int:
        """Tokens to generate: max_tokens checked against the server's limit and the model's context."""
        if max_tokens is not None and not 1 <= max_tokens <= limit:
            raise APIError(400, f"max_tokens={max_tokens}: must be from 1 to {limit} (this server's "
                           "--max-tokens)", param="max_tokens", code="invalid_value")  # fmt: skip
        room = self.ctx - n_prompt if self.ctx else limit
        if room < 1:
            raise APIError(400, f"the prompt is {n_prompt} tokens; this model's context is {self.ctx} tokens and "
                           "generation needs room for at least one more: shorten the prompt",
                           param="prompt", code="context_length_exceeded")  # fmt: skip
        if max_tokens is None:
            return min(default, room)
        if max_tokens > room:
            raise APIError(400, f"the prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceed this model's "
                           f"context of {self.ctx} tokens; ask for at most {room}", param="max_tokens",
                           code="context_length_exceeded")  # fmt: skip
        return max_tokens

    # -- jobs (on the worker thread, the only one that touches the engine) ----------------------------------

    def generate(self, job: Job, ids: list[int], max_new: int, params: SamplingParams, stops: list[str],
                 on_text: Callable[[str], None] | None = None,
                 on_token: Callable[[], None] | None = None) -> Generation:  # fmt: skip
        detok, scan = Detokenizer(self.tok), StopScanner(stops)
        pieces: list[str] = []

        def emit(text: str) -> None:
            if text:
                pieces.append(text)
                if on_text is not None:
                    on_text(text)

        n, finish = 0, "length"
        for tok in self.engine.stream(ids, max_new, params, self.eos):
            n += 1
            if on_token is not None:
                on_token()
            if tok in self.eos:
                finish = "stop"
                break
            emit(scan.push(detok.push(tok)))
            if scan.hit:
                finish = "stop"
                break
            if job.cancelled:  # the client left: stop spending the engine on it
                finish = "cancelled"
                break
        if not scan.hit and finish != "cancelled":
            emit(scan.push(detok.flush()))
            emit("" if scan.hit else scan.flush())
            finish = "stop" if scan.hit else finish
        return Generation("".join(pieces), finish, len(ids), n)

    def classify_task(self, labels: list[str] | None, template: str | None) -> Task:
        """The label words and template of a request, or the server's defaults, validated like a custom task."""
        d = self.classify_defaults
        words = label_continuations(labels) if labels is not None else d.labels
        tmpl = template if template is not None else d.template
        if not words:
            raise APIError(400, "no label words: send \"labels\" (or start the server with --task or --labels, "
                           "or serve a model that records its task)",
                           param="labels", code="missing_required_parameter")  # fmt: skip
        if tmpl is None:
            tmpl = "{text}"  # labels without a template: the text itself is the prompt
        pair = "{text_pair}" in tmpl
        try:
            task = get_task("custom", text_column="text", text_pair_column="text_pair" if pair else None,
                            label_column="label", label_words=words, template=tmpl)  # fmt: skip
            check_words(self.tok, list(task.label_words))
        except BitDistillError as err:
            raise APIError(400, str(err), param="labels" if labels is not None else "template") from None
        return task

    def prompts(self, task: Task, texts: list[str], pairs: list[str] | None) -> list[str]:
        pair_template = bool(task.text_pair_columns)
        if pair_template and pairs is None:
            raise APIError(400, "the template uses {text_pair}: send \"text_pair\" with one string per input",
                           param="text_pair")  # fmt: skip
        if pairs is not None and not pair_template:
            raise APIError(400, '"text_pair" was sent but the template has no {text_pair}', param="text_pair")
        if pairs is not None and len(pairs) != len(texts):
            raise APIError(400, f"\"text_pair\" has {len(pairs)} strings for {len(texts)} inputs",
                           param="text_pair")  # fmt: skip
        return [render(task.template, t.strip(), pairs[i].strip() if pairs else None)[0]
                for i, t in enumerate(texts)]  # fmt: skip

    def classify(self, job: Job, prompts: list[str], words: list[str]) -> list[np.ndarray] | None:
        """Label-word scores per prompt (the runtime's batched scorer, many prompts per forward); None if
        cancelled (checked between prompts, so at the latest after the batch in flight)."""
        if job.cancelled:
            return None
        out = []
        for scores in iter_label_word_scores(self.engine, self.tok, prompts, words):
            if job.cancelled:
                return None
            out.append(scores)
        return out

    def classify_jobs(self, jobs: list[Job], words: list[str]) -> list[list[np.ndarray] | None]:
        """One scoring call for the prompts (`payload`) of a run of classify jobs sharing `words`; each job gets
        its own slice. The call stops early only when every client of the run has left."""
        prompts = [p for j in jobs for p in j.payload]
        scores = self.classify(_Run(jobs), prompts, words)
        if scores is None:
            return [None] * len(jobs)
        out, i = [], 0
        for j in jobs:
            out.append(scores[i : i + len(j.payload)])
            i += len(j.payload)
        return out


class _Run:
    """A run of jobs scored together, seen as one job: cancelled once all of them are."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    @property
    def cancelled(self) -> bool:
        return all(j.cancelled for j in self.jobs)
