"""Task registry: SST-2, MNLI, QNLI, CNN/DailyMail and custom files, as prompt -> target examples.

Every task trains a causal LM on `prompt + target`; the loss (and distillation) sees the target tokens
only. Classification targets are *label words*: each label id has a word such as " positive", and the
model is scored by comparing the words' log-likelihoods after the prompt (see `scoring.py`).

Label words start with a space and the template ends without one ("...\\nSentiment:" + " positive"):
BPE tokenizers (GPT-2/SmolLM2/Llama-3/Qwen) fold the space into the word's first token, so each label
word is a whole-word token exactly as it appears in running text, and the label words of a task begin
with distinct first tokens. `check_label_words` in scoring.py verifies this for a given tokenizer.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BitDistillError
from .readers import FORMATS, Row, read_rows

CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
SUMMARIZATION_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu")
PLACEHOLDERS = ("text", "text_pair")

# Split names a user may say, and the file stems a directory may hold for them (first match wins).
SPLIT_ALIASES = {
    "dev": "dev",
    "validation": "dev",
    "valid": "dev",
    "val": "dev",
    "dev_matched": "dev",
    "validation_matched": "dev",
    "validation_mismatched": "dev_mismatched",
    "train": "train",
    "test": "test",
}


@dataclass(frozen=True)
class Example:
    """One training/eval example: the model reads `prompt` and is trained to continue with `target`.

    `spans` are the character ranges of the source text(s) inside `prompt`; encoding shortens those (from
    their end) when the example is too long, so the template's instruction and the target survive.
    Summarization examples set `eos`, so encoding appends EOS after the target.
    """

    prompt: str
    target: str
    label: int | None = None
    spans: tuple[tuple[int, int], ...] = ()
    eos: bool = False  # append EOS after the target (summaries: the model must learn to stop)


def render(template: str, text: str, text_pair: str | None = None) -> tuple[str, tuple[tuple[int, int], ...]]:
    """Fill `{text}` / `{text_pair}` in `template`; return the prompt and the character spans of the fills."""
    values = {"text": text, "text_pair": text_pair}
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        pos += len(literal)
        if name is None:
            continue
        value = values.get(name)
        if value is None:
            raise BitDistillError(f"template {template!r}: placeholder {{{name}}} has no value")
        out.append(value)
        spans.append((pos, pos + len(value)))
        pos += len(value)
    return "".join(out), tuple(spans)


@dataclass
class Task:
    """A task: where its rows come from, how a row becomes a prompt, and what the target is."""

    name: str
    kind: str  # "classification" | "summarization"
    template: str
    label_words: list[str] = field(default_factory=list)
    metric: tuple[str, ...] = CLASSIFICATION_METRICS
    label_names: list[str] = field(default_factory=list)  # raw label strings in files (e.g. "entailment")
    text_columns: tuple[str, ...] = ("text",)
    text_pair_columns: tuple[str, ...] = ()
    label_columns: tuple[str, ...] = ("label",)  # classification: the label; summarization: the summary
    hub: tuple[str, str | None] | None = None  # (dataset id, config) for datasets.load_dataset
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "validation"})
    dev_stems: tuple[str, ...] = ("dev", "validation")
    path: str | None = None  # default data location (custom tasks)

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.metric

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    # -- loading -------------------------------------------------------------------------------------

    def load(
        self, split: str = "train", path: str | Path | None = None, limit: int | None = None
    ) -> list[Example]:
        """Examples of `split` from `path` (a file, or a directory holding {split}.tsv/.jsonl/.csv/.parquet),
        or from the hub when no path is given. `limit` keeps the first N rows in file order."""
        path = path if path is not None else self.path
        if path is None:
            rows, source = self._hub_rows(split, limit), f"{self.hub} split {split!r}"
        else:
            file = self.split_file(path, split)
            rows, source = read_rows(file), str(file)
        examples: list[Example] = []
        if limit is not None and limit <= 0:
            return examples
        # Only a test split may lack labels (GLUE test files); elsewhere a missing label column is an error.
        labeled = SPLIT_ALIASES.get(split, split) != "test"
        columns: dict[str, str | None] | None = None
        for where, row in rows:
            if columns is None:
                columns = self._columns(row, where, labeled)
            example = self.example(row, columns, where)
            if labeled and example.label is None and self.kind == "classification":
                # -1 is the hub's marker for unlabeled test rows; in a split that is scored it would
                # silently drop the row from the accuracy
                raise BitDistillError(
                    f"{where}: label -1 (unlabeled) in split {split!r}; only a test split may hold unlabeled "
                    "rows. Fix or remove the row"
                )
            examples.append(example)
            if limit is not None and len(examples) >= limit:
                break
        if not examples:
            raise BitDistillError(f"{source}: no rows (task {self.name!r}, split {split!r})")
        return examples

    def split_file(self, path: str | Path, split: str) -> Path:
        """The file that holds `split` under `path` (itself, when `path` is a file; `builtin:sst2` is the
        packaged copy)."""
        from .builtin import resolve

        p = resolve(path)
        if p.is_file():
            return p
        if not p.is_dir():
            raise BitDistillError(f"{p}: no such file or directory (data for task {self.name!r})")
        canonical = SPLIT_ALIASES.get(split, split)
        stems = (
            self.dev_stems if canonical == "dev" else (split,) if split == canonical else (split, canonical)
        )
        for stem in stems:
            for ext in FORMATS:
                candidate = p / f"{stem}{ext}"
                if candidate.is_file():
                    return candidate
        wanted = ", ".join(f"{s}{{{','.join(FORMATS)}}}" for s in stems)
        present = ", ".join(sorted(x.name for x in p.iterdir())[:20]) or "nothing"
        raise BitDistillError(f"{p}: no file for split {split!r} (looked for {wanted}); it holds: {present}")

    def _hub_rows(self, split: str, limit: int | None) -> Iterator[tuple[str, Row]]:
        if self.hub is None:
            raise BitDistillError(
                f"task {self.name!r} has no hub dataset; pass a data path (a file or directory)"
            )
        hub_id, config = self.hub
        canonical = SPLIT_ALIASES.get(split, split)
        hub_split = self.hub_splits.get(canonical, split)
        if limit is not None:
            hub_split = f"{hub_split}[:{max(limit, 0)}]"
        try:
            import datasets

            ds = datasets.load_dataset(hub_id, config, split=hub_split)
        except Exception as e:  # offline, unknown split, ... : say how to use local files instead
            raise BitDistillError(
                f"task {self.name!r}: could not load {hub_id}"
                + (f"/{config}" if config else "")
                + f" split {hub_split!r} from the Hugging Face hub ({type(e).__name__}: {e}). Without a "
                f"network pass a local path: a directory holding {split}.tsv/.jsonl/.csv/.parquet or one file"
            ) from None
        name = f"{hub_id}" + (f"/{config}" if config else "")
        return ((f"{name} {hub_split} row {i + 1}", row) for i, row in enumerate(ds))

    # -- rows -> examples ----------------------------------------------------------------------------

    def _columns(self, row: Row, where: str, labeled: bool = True) -> dict[str, str | None]:
        """Pick, once per file, which column plays which role (first accepted name present wins)."""
        source = where.rsplit(" line ", 1)[0].rsplit(" row ", 1)[0]
        keys = list(row)

        def pick(role: str, names: Iterable[str], required: bool) -> str | None:
            names = tuple(names)
            for n in names:
                if n in row:
                    return n
            if required and names:
                raise BitDistillError(
                    f"{source}: no {role} column (expected one of {', '.join(map(repr, names))}); its "
                    f"columns are {', '.join(map(repr, keys))}. For other files use the custom task with "
                    f"{role}_column=..."
                )
            return None

        label_required = labeled or self.kind == "summarization"
        return {
            "text": pick("text", self.text_columns, True),
            "text_pair": pick("text_pair", self.text_pair_columns, bool(self.text_pair_columns)),
            # A test file without a label column (GLUE test.tsv) gives unlabeled examples.
            "label": pick("label", self.label_columns, label_required),
        }

    def example(self, row: Row, columns: dict[str, str | None], where: str) -> Example:
        # Surrounding whitespace is noise (GLUE sentences end with a space); strip it from the prompt.
        text = self._text(row, columns["text"], where).strip()
        pair = self._text(row, columns["text_pair"], where).strip() if columns["text_pair"] else None
        prompt, spans = render(self.template, text, pair)
        if self.kind == "summarization":
            summary = self._text(row, columns["label"], where).strip()
            return Example(prompt, " " + summary, None, spans, eos=True)
        label = self.parse_label(row.get(columns["label"]) if columns["label"] else None, where)
        return Example(prompt, self.label_words[label] if label is not None else "", label, spans)

    @staticmethod
    def _text(row: Row, column: str | None, where: str) -> str:
        value = row.get(column) if column else None
        if value is None:
            raise BitDistillError(f"{where}: field {column!r} is missing or null")
        if not isinstance(value, str):
            raise BitDistillError(
                f"{where}: field {column!r} must be text, found {type(value).__name__} {value!r}"
            )
        return value

    def parse_label(self, raw: object, where: str) -> int | None:
        """A label id from an int, a digit string, a label name (e.g. "entailment") or a label word.

        Missing labels and -1 (the hub's marker for unlabeled test rows) give None.
        """
        n = self.num_labels
        if raw is None or raw == -1 or raw == "-1":
            return None
        if isinstance(raw, bool):
            raw = int(raw)
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, str):
            s = raw.strip()
            if s.lstrip("-").isdigit():
                raw = int(s)
            else:
                names = [x.lower() for x in self.label_names]
                words = [w.strip().lower() for w in self.label_words]
                for table in (names, words):
                    if s.lower() in table:
                        return table.index(s.lower())
        if isinstance(raw, int) and 0 <= raw < n:
            return raw
        allowed = ", ".join(str(i) for i in range(n))
        if self.label_names:
            allowed += " (or " + ", ".join(self.label_names) + ")"
        raise BitDistillError(f"{where}: label {raw!r} is not one of {allowed}; fix or remove the row")


# -- registry --------------------------------------------------------------------------------------------

TASKS: dict[str, Task] = {
    # GLUE lives at nyu-mll/glue on the hub (the old id "glue" redirects there).
    "sst2": Task(
        name="sst2",
        kind="classification",
        template="Sentence: {text}\nSentiment:",
        label_words=[" negative", " positive"],
        label_names=["negative", "positive"],
        text_columns=("sentence",),
        hub=("nyu-mll/glue", "sst2"),
    ),
    "mnli": Task(
        name="mnli",
        kind="classification",
        template="Premise: {text}\nHypothesis: {text_pair}\nDoes the premise entail the hypothesis? Answer:",
        label_words=[" yes", " maybe", " no"],
        label_names=["entailment", "neutral", "contradiction"],
        # Hub/jsonl column names first, then the GLUE TSV ones (train.tsv, dev_matched.tsv).
        text_columns=("premise", "sentence1"),
        text_pair_columns=("hypothesis", "sentence2"),
        label_columns=("label", "gold_label"),
        hub=("nyu-mll/glue", "mnli"),
        hub_splits={
            "train": "train",
            "dev": "validation_matched",
            "dev_mismatched": "validation_mismatched",
            "test": "test_matched",
        },
        dev_stems=("dev_matched", "dev", "validation_matched", "validation"),
    ),
    "qnli": Task(
        name="qnli",
        kind="classification",
        template="Question: {text}\nSentence: {text_pair}\nDoes the sentence answer the question? Answer:",
        label_words=[" yes", " no"],
        label_names=["entailment", "not_entailment"],
        text_columns=("question",),
        text_pair_columns=("sentence",),
        hub=("nyu-mll/glue", "qnli"),
    ),
    "cnndm": Task(
        name="cnndm",
        kind="summarization",
        template="Article: {text}\nSummary:",
        metric=SUMMARIZATION_METRICS,
        text_columns=("article",),
        label_columns=("highlights",),
        hub=("abisee/cnn_dailymail", "3.0.0"),
    ),
    # Filled in by get_task("custom", text_column=..., ...).
    "custom": Task(name="custom", kind="classification", template="{text}", text_columns=()),
}

OVERRIDABLE = ("template", "label_words", "label_names", "path")
CUSTOM_OPTIONS = (
    "text_column", "text_pair_column", "label_column", "target_column", "label_words", "label_names",
    "template", "kind", "path",
)  # fmt: skip


def get_task(name: str, **options: object) -> Task:
    """A fresh Task by name; built-ins accept overrides of template/label_words/label_names/path, and
    `custom` is configured entirely from options (text_column, text_pair_column, label_column,
    label_words, template, kind, label_names, target_column, path)."""
    key = name.lower().replace("-", "").replace("_", "")
    key = {"sst": "sst2", "cnndailymail": "cnndm", "cnn": "cnndm"}.get(key, key)
    if key not in TASKS:
        raise BitDistillError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    options = {k: v for k, v in options.items() if v is not None}
    if key == "custom":
        return _custom(options)
    unknown = sorted(set(options) - set(OVERRIDABLE))
    if unknown:
        raise BitDistillError(
            f"task {key!r}: unknown option(s) {', '.join(unknown)}; built-in tasks accept "
            f"{', '.join(OVERRIDABLE)} (use task 'custom' for other columns)"
        )
    base = TASKS[key]
    # Fresh lists/dicts: a caller mutating its task must never change the registry.
    fresh = {"label_words": list(base.label_words), "label_names": list(base.label_names)}
    fresh["hub_splits"] = dict(base.hub_splits)
    fresh.update({k: (list(v) if k.startswith("label") else v) for k, v in options.items()})
    task = dataclasses.replace(base, **fresh)
    _validate(task)
    return task


def _custom(options: dict[str, object]) -> Task:
    unknown = sorted(set(options) - set(CUSTOM_OPTIONS))
    if unknown:
        raise BitDistillError(
            f"custom task: unknown option(s) {', '.join(unknown)}; use {', '.join(CUSTOM_OPTIONS)}"
        )
    kind = str(options.get("kind", "classification"))
    if "text_column" not in options:
        raise BitDistillError("custom task: set text_column (the column holding the input text)")
    pair = options.get("text_pair_column")
    template = options.get("template") or ("{text}\n{text_pair}\nAnswer:" if pair else "{text}\nAnswer:")
    if kind == "summarization":
        target = options.get("target_column") or options.get("label_column")
        if not target:
            raise BitDistillError(
                "custom summarization task: set target_column (the column holding the summary)"
            )
        task = Task(
            name="custom",
            kind=kind,
            template=str(template),
            metric=SUMMARIZATION_METRICS,
            text_columns=(str(options["text_column"]),),
            text_pair_columns=(str(pair),) if pair else (),
            label_columns=(str(target),),
            path=options.get("path"),  # type: ignore[arg-type]
        )
    elif kind == "classification":
        if "label_column" not in options or "label_words" not in options:
            raise BitDistillError(
                "custom classification task: set label_column and label_words (one target string per label "
                "id, with a leading space, e.g. [' negative', ' positive'])"
            )
        task = Task(
            name="custom",
            kind=kind,
            template=str(template),
            label_words=[str(w) for w in options["label_words"]],  # type: ignore[union-attr]
            label_names=[str(w) for w in options.get("label_names") or []],  # type: ignore[union-attr]
            text_columns=(str(options["text_column"]),),
            text_pair_columns=(str(pair),) if pair else (),
            label_columns=(str(options["label_column"]),),
            path=options.get("path"),  # type: ignore[arg-type]
        )
    else:
        raise BitDistillError(f"custom task: kind {kind!r} must be 'classification' or 'summarization'")
    _validate(task)
    return task


def _validate(task: Task) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(task.template) if f is not None]
    except ValueError as e:
        raise BitDistillError(
            f"task {task.name!r}: bad template {task.template!r} ({e}); write braces as {{{{ }}}}"
        ) from None
    bad = [f for f in fields if f not in PLACEHOLDERS]
    if bad or "text" not in fields:
        raise BitDistillError(
            f"task {task.name!r}: template {task.template!r} must contain {{text}} (and {{text_pair}} for "
            f"pairs) and no other placeholders; found {fields}"
        )
    if ("text_pair" in fields) != bool(task.text_pair_columns):
        raise BitDistillError(
            f"task {task.name!r}: template {task.template!r} uses {{text_pair}} iff a text_pair_column is set"
        )
    if task.kind == "classification":
        words = task.label_words
        if len(words) < 2 or len(set(words)) != len(words) or any(not w.strip() for w in words):
            raise BitDistillError(
                f"task {task.name!r}: label_words {words!r} must be at least two distinct, non-empty strings"
            )
        if task.label_names and len(task.label_names) != len(words):
            raise BitDistillError(
                f"task {task.name!r}: {len(task.label_names)} label_names for {len(words)} label_words"
            )
