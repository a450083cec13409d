"""`bitdistill run --check`: every late-validation case fails up front, in well under a second, as one line
(exit 2, no traceback, nothing written), and a good recipe prints its plan."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bitdistill.cli import main
from bitdistill.pipeline.modelinfo import model_shape
from tiny_models import FAMILIES, save_tiny_hf_dir
from tiny_pipeline import build_world

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"


def write_recipe(path: Path, world: dict[str, Path], out: Path, **top) -> Path:
    data = yaml.safe_load(CONFIG.read_text())
    data.update(model=str(world["model"]), output_dir=str(out), **top)
    data["task"]["path"] = str(world["data"])
    data["continue_pretrain"]["corpus"]["sources"] = [str(world["corpus"])]
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def recipe(world, tmp_path):
    return write_recipe(tmp_path / "recipe.yaml", world, tmp_path / "run")


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_good_recipe_prints_the_plan_and_writes_nothing(recipe, tmp_path, capsys):
    before = snapshot(tmp_path)
    assert main(["run", str(recipe), "--check"]) == 0
    out = capsys.readouterr().out
    assert snapshot(tmp_path) == before
    lines = out.splitlines()
    assert lines[-1] == "check: ok"
    for stage, steps in (("teacher", 12), ("bitnet_sft", 10), ("continue_pretrain", 12), ("distill", 12)):
        (line,) = [x for x in lines if x.split()[:1] == [stage]]
        assert f"{steps} steps x 8" in line and "lr 0.003" in line and "per device" in line
        assert str(tmp_path / "run" / stage) in line and line.endswith("[new]")
    assert any(x.split()[:1] == ["eval"] for x in lines)


BAD = [
    ({"distill.student_layer": 99}, "distill.student_layer: layer 99 does not exist"),
    ({"distill.teacher_layer": -3}, "has 2 decoder layers"),
    ({"distill.relation_heads": 5}, "distill.relation_heads: 5 does not divide"),
    ({"distill.student": "/nonexistent/student"}, "distill.student: /nonexistent/student: no such file"),
    ({"distill.teacher": "/nonexistent/teacher"}, "distill.teacher: /nonexistent/teacher: no such file"),
    ({"bitnet.granularity": "group", "bitnet.group_size": 7}, "bitnet.group_size: 7 does not divide"),
    ({"task.eval_batch_size": 0}, "task.eval_batch_size: must be >= 1"),
    ({"distill.gamma_attention": ".nan"}, "distill.gamma_attention: must be a finite number"),
    ({"distill.lambda_logits": -1}, "distill.lambda_logits: must be a finite number >= 0"),
    ({"distill.temperature": ".inf"}, "distill.temperature: must be a finite number > 0"),
    ({"train.weight_decay": -0.1}, "train.weight_decay: must be a finite number >= 0"),
    ({"distill.train.max_grad_norm": -1}, "distill.train.max_grad_norm: must be a finite number >= 0"),
    ({"train.lr": ".inf"}, "train.lr: must be a finite number > 0"),
    ({"train.keep_checkpoints": 0}, "train.keep_checkpoints: must be >= 1"),
    ({"train.warmup_ratio": 0.1}, "train: warmup_steps (2) and warmup_ratio (0.1) are both set"),
    ({"distill.train.warmup_ratio": 0.1}, "distill.train.warmup_ratio: ignored, since train.warmup_steps (2)"),
    ({"name": "../../evil", "output_dir": "null"}, "name: '../../evil' must be a plain directory name"),
    ({"name": "a/b", "output_dir": "null"}, "must be a plain directory name"),
    ({"task.path": "/nonexistent/data"}, "task.path: /nonexistent/data: no such file or directory"),
    ({"teacher.path": "/nonexistent/teacher"}, "teacher.path: /nonexistent/teacher: no such file"),
    ({"continue_pretrain.corpus.sources": "[/nonexistent/corpus.txt]"}, "continue_pretrain.corpus.sources"),
    ({"model": "SomeOrg/not-cached-model"}, "is a hub id, not a local path, and HF_HUB_OFFLINE is set"),
    ({"teacher.enabled": "false"}, "distill.teacher: auto takes the teacher stage's output"),
]


@pytest.fixture(scope="module")
def warm(world, tmp_path_factory):
    """One check first, so the timed ones measure the check, not Python's first imports."""
    tmp = tmp_path_factory.mktemp("warm")
    assert main(["run", str(write_recipe(tmp / "r.yaml", world, tmp / "run")), "--check"]) == 0


@pytest.mark.parametrize(("sets", "message"), BAD, ids=[next(iter(s)) for s, _ in BAD])
def test_late_validation_fails_at_check(warm, recipe, tmp_path, capsys, monkeypatch, sets, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # a relative runs/<name> would land here
    before = snapshot(tmp_path)
    args = ["run", str(recipe), "--check"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    t0 = time.perf_counter()
    code = main(args)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(tmp_path) == before
    assert elapsed < 1.0, f"--check took {elapsed:.2f}s"


def test_a_stage_warmup_steps_overrides_the_recipe_ratio(recipe, capsys):
    """The paper configs' layering (recipe warmup_ratio, a stage's warmup_steps) is an override, not a clash."""
    sets = ["train.warmup_steps=0", "train.warmup_ratio=0.1", "continue_pretrain.train={warmup_steps: 5}"]
    assert main(["run", str(recipe), "--check", *[x for s in sets for x in ("--set", s)]]) == 0
    capsys.readouterr()


def test_the_same_check_runs_before_training(recipe, tmp_path, capsys):
    """Without --check a bad recipe stops before the first stage trains, with the same message."""
    code = main(["run", str(recipe), "--set", "distill.gamma_attention=.nan"])
    assert code == 2
    assert "distill.gamma_attention: must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_duplicate_yaml_keys_are_refused(world, tmp_path, capsys):
    path = write_recipe(tmp_path / "r.yaml", world, tmp_path / "run")
    text = path.read_text().replace("seed: 7\n", "seed: 7\nseed: 8\n")
    path.write_text(text)
    assert main(["run", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: line" in err and "duplicate key 'seed'" in err and err.count("\n") == 1


def test_restart_names_are_checked(recipe, capsys):
    assert main(["run", str(recipe), "--check", "--restart", "distil"]) == 2
    assert "--restart: 'distil' is not one of" in capsys.readouterr().err
    assert main(["run", str(recipe), "--check", "--restart", "bitnet_sft", "--set", "bitnet_sft.enabled=false"]) == 2
    assert "--restart bitnet_sft: that stage is disabled" in capsys.readouterr().err


def test_check_in_a_fresh_process_has_no_traceback(recipe, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bitdistill.cli", "run", str(recipe), "--check", "--set", "distill.student_layer=99"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_from_config_matches_the_model(tmp_path, family):
    """Parameter counts and linear widths read from config.json equal those of the instantiated model."""
    model = save_tiny_hf_dir(tmp_path, family)
    shape = model_shape(str(tmp_path), "model")
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    assert shape.layers == model.config.num_hidden_layers
    block = model.model.layers[0]
    for name, width in shape.linear_inputs().items():
        parent = block.self_attn if name[0] in "qkvo" else block.mlp
        assert getattr(parent, name).in_features == width, name
    attn = block.self_attn
    assert shape.qkv_widths == (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features)


def test_embedded_gguf_shape_without_loading_it():
    """SmolLM2-135M from the GGUF header alone (the published count: 134,515,008 parameters, 30 layers)."""
    pytest.importorskip("gguf")
    try:
        shape = model_shape("smollm2-135m", "model")
    except Exception as err:  # the embedded package is not installed here
        pytest.skip(str(err))
    assert (shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.tied) == (30, 576, 9, 3, True)
    assert shape.parameters() == 134_515_008
