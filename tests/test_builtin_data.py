"""The packaged data: SST-2 and the Austen corpus load from the package, and from a fresh clone with
nothing beside it (no ../shared), as a user's machine has."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bitdistill.data.builtin import resolve
from bitdistill.data.corpus import expand_sources
from bitdistill.data.tasks import get_task
from bitdistill.errors import BitDistillError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
NEEDS_GIT = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)


def test_builtin_sst2_has_the_glue_splits():
    task = get_task("sst2")
    dev = task.load("dev", "builtin:sst2")
    assert len(task.load("train", "builtin:sst2")) == 67349 and len(dev) == 872
    assert sum(ex.label for ex in dev) == 444  # GLUE SST-2 dev: 444 positive, 428 negative


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data to compare against")
def test_builtin_copies_are_the_shared_files_byte_for_byte():
    for name in ("train", "dev"):
        packed = gzip.decompress((resolve("builtin:sst2") / f"{name}.tsv.gz").read_bytes())
        assert packed == (SHARED / "sst2" / f"{name}.tsv").read_bytes()
    assert resolve("builtin:austen").read_bytes() == (SHARED / "corpus" / "austen.txt.gz").read_bytes()


def test_builtin_austen_corpus_and_unknown_names():
    (path,) = expand_sources(["builtin:austen"])
    text = gzip.decompress(Path(path).read_bytes()).decode("utf-8")
    docs = [d for d in text.split("\n\n") if d.strip()]
    assert len(docs) == 275 and 700_000 < len(text.split()) < 740_000
    with pytest.raises(BitDistillError, match="builtin:imdb: no such built-in data; use one of builtin:sst2"):
        resolve("builtin:imdb")


@NEEDS_GIT
def test_a_fresh_clone_loads_the_demo_data_without_shared(tmp_path):
    clone = tmp_path / "p"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    assert not (clone.parent / "shared").exists()
    code = (
        "from bitdistill.pipeline import load_recipe\n"
        "from bitdistill.cli.demo import demo_recipe_path\n"
        "from bitdistill.data.tasks import get_task\n"
        "from bitdistill.data.corpus import expand_sources\n"
        "import bitdistill\n"
        "r = load_recipe(demo_recipe_path())\n"
        "t = get_task(r.task.name)\n"
        "f = t.split_file(r.task.path, 'train')\n"
        "assert str(f).startswith(str(__import__('pathlib').Path.cwd())), f\n"
        "print(len(t.load('train', r.task.path)), len(t.load('dev', r.task.path)), expand_sources(['builtin:austen'])[0])\n"
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(clone / "src"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=clone, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    n_train, n_dev, corpus = out.stdout.split()
    assert (n_train, n_dev) == ("67349", "872") and corpus.startswith(str(clone))


@NEEDS_GIT
def test_a_fresh_clone_runs_a_tiny_demo_without_shared(tmp_path_factory):
    """`bitdistill demo` with its default data, from a clone with nothing beside it: every file the run
    opens (audit hook on open) is inside the clone, the tiny model, the temp dirs or Python itself."""
    from test_demo import TINY
    from tiny_pipeline import build_model_dir

    model = build_model_dir(tmp_path_factory.mktemp("model") / "base")
    clone = tmp_path_factory.mktemp("empty") / "p"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    assert sorted(os.listdir(clone.parent)) == ["p"]
    sets = [*TINY, "task.train_limit=64", "task.eval_limit=16"]
    code = (
        "import sys\n"
        "opened = set()\n"
        "sys.addaudithook(lambda ev, a: opened.add(str(a[0])) if ev == 'open' and isinstance(a[0], str) else None)\n"
        "from bitdistill.cli import main\n"
        f"rc = main(['demo', '--model', {str(model)!r}, '--out', 'runs/demo', *{[a for s in sets for a in ('--set', s)]!r}])\n"
        "data = ('.tsv', '.gz', '.jsonl', '.csv', '.parquet')\n"
        "print('OPENED', *sorted(p for p in opened if '/shared/' in p or p.endswith(data)))\n"
        "sys.exit(rc)\n"
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(clone / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=clone, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| BitDistill |" in out.stdout and (clone / "runs" / "demo" / "report.md").is_file()
    opened = out.stdout.split("OPENED", 1)[1].split()
    assert {Path(p).name for p in opened} >= {"train.tsv.gz", "dev.tsv.gz"}
    assert all((clone / p).resolve().is_relative_to(clone) for p in opened), opened  # no ../shared
