"""`bitdistill convert` and `bitdistill inspect` end to end on a tiny local HF directory."""

import json
import os
import subprocess
import sys

import pytest
import torch

import bitdistill
from bitdistill.cli import main
from bitdistill.quant import ternarize
from tiny_models import save_tiny_hf_dir


def test_convert_then_inspect_json(tmp_path, capsys):
    save_tiny_hf_dir(tmp_path / "hf", "qwen3")
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "bit")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "bit"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == "qwen3" and info["num_bitlinear"] == 14 and info["num_subln"] == 4
    model = bitdistill.load(tmp_path / "bit")
    counts = torch.zeros(3)
    for name, p in model.named_parameters():
        if name.endswith("_proj.weight") and ".layers." in name:
            q, _ = ternarize(p)
            counts += torch.tensor([(q == v).sum().item() for v in (-1, 0, 1)], dtype=torch.float)
    expected = (counts / counts.sum()).tolist()
    got = [info["ternary_share"][k] for k in ("-1", "0", "+1")]
    assert got == pytest.approx(expected)
    assert bitdistill.load_tokenizer(tmp_path / "bit") is not None


def test_convert_options_are_recorded(tmp_path, capsys):
    save_tiny_hf_dir(tmp_path / "hf", "llama")
    args = ["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "bit"), "--no-subln"]
    assert main(args + ["--granularity", "group", "--group-size", "32"]) == 0
    settings = bitdistill.load(tmp_path / "bit").config.bitdistill
    assert settings["subln"] == "none" and settings["granularity"] == "group" and settings["group_size"] == 32
    assert "SubLN norms      0" in capsys.readouterr().out


def test_errors_are_clear_and_exit_2(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "x.bin").write_bytes(b"junk")
    assert main(["convert", str(tmp_path / "x.bin"), "--out", str(tmp_path / "o")]) == 2
    assert ".gguf" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_smollm2_converts_to_210_bitlinear_and_60_subln(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bitdistill.cli", "convert", "smollm2-135m", "--out", str(tmp_path / "s")]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    out = subprocess.run(
        [sys.executable, "-m", "bitdistill.cli", "inspect", str(tmp_path / "s"), "--json"],
        check=True, env=env, capture_output=True, text=True,
    ).stdout  # fmt: skip
    info = json.loads(out)
    assert info["model_type"] == "llama" and info["num_layers"] == 30
    assert info["num_bitlinear"] == 210 and info["num_subln"] == 60
    assert sum(info["ternary_share"].values()) == pytest.approx(1.0)
