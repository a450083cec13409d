"""The memory plan of a multi-process launch (pipeline/launch.py, pipeline/memory.py): FSDP2's per-device
bytes against numbers written out by hand, the FSDP units against a real model's modules, the launch read
from accelerate's environment, and `bitdistill run --check --num-processes N --fsdp` with its bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import Qwen3Config, Qwen3ForCausalLM

from bitdistill.cli import main
from bitdistill.errors import BitDistillError
from bitdistill.pipeline.launch import Launch, launch_from_environment, planned_launch
from bitdistill.pipeline.memory import stage_memory
from bitdistill.pipeline.modelinfo import shape_from_config

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_RESHARD_AFTER_FORWARD",
               "FSDP_OFFLOAD_PARAMS")  # fmt: skip
# q 4x16=64, k = v = 2x16=32 wide. One decoder layer: q/k/v 64x(64+32+32) = 8192, o_proj 64x64 = 4096,
# q/k norms 2x16 = 32, MLP 3x64x192 = 36864, two RMSNorms 2x64 = 128: 49312. The root: tied embedding
# 256x64 = 16384 + final norm 64 = 16448.
CONFIG = dict(model_type="qwen3", vocab_size=256, hidden_size=64, intermediate_size=192, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)  # fmt: skip
LAYER, ROOT_UNIT = 49312, 16448


@pytest.fixture(autouse=True)
def _no_launch(monkeypatch):
    """Each test starts outside any launch; the ones that need one set it."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)


def shape(layers: int, **changes):
    return shape_from_config({**CONFIG, "num_hidden_layers": layers, **changes}, "test")


def test_units_are_a_real_models_decoder_layer_and_the_rest():
    for tied in (True, False):
        cfg = {**CONFIG, "num_hidden_layers": 2, "tie_word_embeddings": tied}
        model = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in cfg.items() if k != "model_type"}))
        s = shape_from_config(cfg, "test")
        layer = sum(p.numel() for p in model.model.layers[0].parameters())
        unique = {id(p): p for p in model.parameters()}.values()
        assert s.layer_parameters() == layer == LAYER
        assert s.root_parameters() == sum(p.numel() for p in unique) - 2 * layer
    assert shape(2).root_parameters() == ROOT_UNIT
    assert shape(2, tie_word_embeddings=False).root_parameters() == ROOT_UNIT + 256 * 64


def test_fsdp_divides_weights_grads_and_adamw_by_n_and_adds_the_largest_unit():
    params = ROOT_UNIT + 2 * LAYER  # 115072, divisible by 4
    est = stage_memory(shape(2), 1000, launch=Launch(4, fsdp=True))
    # float32 weights / 4 + the largest unit (a decoder layer, 49312 > 16448) gathered whole, in float32
    assert est.weights == params * 4 // 4 + LAYER * 4 == 312320
    assert est.grads == 312320  # the computing unit's gradient is whole until reduce-scattered
    assert est.optimizer == params * 8 // 4 == 230144  # AdamW's two float32 moments, sharded
    assert est.activations == 1000  # per device, at the per-device batch: not divided
    assert est.total == 312320 * 2 + 230144 + 1000
    assert est.load == params * 4  # before sharding every process holds the whole float32 model
    # Data parallel over the same 4 processes replicates all of it.
    ddp = stage_memory(shape(2), 1000, launch=Launch(4))
    assert (ddp.weights, ddp.grads, ddp.optimizer) == (params * 4, params * 4, params * 8)
    # FSDP with one process shards nothing (as train.sharding.shards_here).
    assert stage_memory(shape(2), 1000, launch=Launch(1, fsdp=True)) == stage_memory(shape(2), 1000)


def test_the_root_is_the_largest_unit_when_the_vocabulary_dominates():
    big_vocab = shape(2, vocab_size=4096)  # root 4096x64 + 64 = 262208 > a layer's 49312
    params = 262208 + 2 * LAYER  # 360832 = 8 x 45104
    est = stage_memory(big_vocab, 0, launch=Launch(8, fsdp=True))
    assert est.weights == params * 4 // 8 + 262208 * 4 == 1229248


def test_the_teacher_is_replicated_or_sharded_per_distill_teacher_sharding():
    params = ROOT_UNIT + 2 * LAYER
    fsdp = Launch(4, fsdp=True)
    replicated_fp32 = stage_memory(shape(2), 0, teacher=shape(2), teacher_bytes=4, launch=fsdp)
    replicated_bf16 = stage_memory(shape(2), 0, teacher=shape(2), teacher_bytes=2, launch=fsdp)
    sharded_fp32 = stage_memory(shape(2), 0, shape(2), 4, fsdp, teacher_sharded=True)
    sharded_bf16 = stage_memory(shape(2), 0, shape(2), 2, fsdp, teacher_sharded=True)
    assert replicated_fp32.teacher == params * 4 == 460288
    assert replicated_bf16.teacher == params * 2 == 230144
    assert sharded_fp32.teacher == params * 4 // 4 + LAYER * 4 == 312320  # 1/N plus one gathered layer
    assert sharded_bf16.teacher == params * 2 // 4 + LAYER * 2 == 156160
    # A sharded teacher under DDP (teacher_sharding works with any multi-process launch) is sharded too.
    assert stage_memory(shape(2), 0, shape(2), 4, Launch(4), teacher_sharded=True).teacher == 312320
    # One process: nothing to shard over.
    assert stage_memory(shape(2), 0, shape(2), 4, Launch(1), teacher_sharded=True).teacher == 460288
    # Loading: the teacher is placed first (whole, then sharded), then the whole student arrives.
    assert replicated_fp32.load == 460288 + params * 4
    assert sharded_fp32.load == 312320 + params * 4


def test_the_load_is_the_peak_when_the_shards_are_small():
    params = ROOT_UNIT + 8 * LAYER  # 410944 = 8 x 51368
    est = stage_memory(shape(8), 0, launch=Launch(8, fsdp=True))
    shard = params * 4 // 8
    assert est.total == (shard + LAYER * 4) * 2 + params * 8 // 8 == 1216384
    assert est.load == params * 4 == 1643776
    assert est.peak == est.load
    assert "loading peaks higher, at 1.6 MiB" in est.describe()


def test_resharding_off_and_offloading_as_the_accelerate_file_sets_them():
    params = ROOT_UNIT + 2 * LAYER
    keep = stage_memory(shape(2), 0, launch=Launch(4, fsdp=True, reshard_after_forward=False))
    assert keep.weights == params * 4 // 4 + params * 4  # every unit gathered from forward to backward
    assert keep.grads == params * 4 // 4 + LAYER * 4
    offload = stage_memory(shape(2), 0, launch=Launch(4, fsdp=True, offload_params=True))
    assert (offload.weights, offload.grads, offload.optimizer) == (LAYER * 4, LAYER * 4, 0)  # shards on CPU


def test_the_launch_is_read_from_accelerates_environment(monkeypatch):
    assert launch_from_environment() == Launch(source="no accelerate/torchrun launch")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launch_from_environment() == Launch(4, source="the accelerate launch environment")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    got = launch_from_environment()
    assert (got.processes, got.fsdp, got.offload_params, got.reshard_after_forward) == (4, True, True, True)
    # The flags replace only their own part of it.
    assert planned_launch(num_processes="8").processes == 8 and planned_launch(num_processes="8").fsdp
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(BitDistillError, match="FSDP_VERSION=1"):
        launch_from_environment()


def check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", str(ROOT / "configs" / "qwen3-0.6b-sst2.yaml"), "--check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_plans_fsdp_from_the_flags(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, _ = check(capsys, "--num-processes", "2", "--fsdp")
    assert code == 0
    assert "  launch: FSDP2 sharded over 2 processes; from --num-processes and --fsdp" in out.splitlines()
    # Qwen3-0.6B by hand (hidden 1024, MLP 3072, 28 layers, 16 heads, 8 KV heads of 128, vocab 151936, tied):
    # a layer 1024x(2048+1024+1024) + 2048x1024 + 2x128 + 3x1024x3072 + 2x1024 = 15730944, the root
    # 151936x1024 + 1024 = 155583488 (the largest unit), all 596049920. Per GPU of 2, float32:
    # weights 596049920x4/2 + 155583488x4 = 1814433792 B = 1.69 GiB, AdamW 596049920x8/2 B = 2.22 GiB.
    line = next(x for x in out.splitlines() if x.strip().startswith("memory per device (bitnet_sft)"))
    assert "weights 1.69 GiB + grads 1.69 GiB + AdamW 2.22 GiB + activations" in line, line
    # Continued pre-training's length is its 10B-token budget over the global batch, as stages/pretrain.py
    # computes it: ceil(10e9 / (4 x 8 accum x 2 processes x 2048)) = 76294 steps.
    assert "76294 steps x 4 (x8 accum) blocks of 2048 x 2 processes" in out
    code, out, _ = check(capsys, "--num-processes", "2")
    assert "  launch: data parallel (DDP, replicated) over 2 processes; from --num-processes" in out
    assert "weights 2.22 GiB + grads 2.22 GiB + AdamW 4.44 GiB" in out  # 596049920 x 4 and x 8


def test_check_plans_the_accelerate_launch_it_runs_under(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    code, out, _ = check(capsys)
    assert code == 0
    assert "  launch: FSDP2 sharded over 2 processes; from the accelerate launch environment" in out
    assert "weights 1.69 GiB + grads 1.69 GiB + AdamW 2.22 GiB" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-processes", "0"], "--num-processes=0: must be from 1 to 65536"),
        (["--num-processes", "two"], "--num-processes='two': not a whole number"),
        (["--num-processes", "-3", "--fsdp"], "--num-processes=-3: must be from 1 to 65536"),
        (["--fsdp"], "--fsdp: FSDP shards over the processes and this plan has 1; add --num-processes N"),
        (["--num-processes", "1", "--fsdp"], "--fsdp: FSDP shards over the processes and this plan has 1"),
    ],
)
def test_bad_launch_flags_are_one_line_errors(capsys, args, message):
    code, _, err = check(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"bitdistill run: error: {message}"), lines[0]


def test_launch_flags_without_check_are_refused_before_anything_runs(capsys, tmp_path):
    code = main(["run", str(ROOT / "configs" / "qwen3-0.6b-sst2.yaml"), "--output-dir", str(tmp_path / "r"),
                 "--num-processes", "8", "--fsdp"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--num-processes/--fsdp only plan a launch, with --check" in err[0]
    assert not (tmp_path / "r").exists()


def test_the_warning_over_a_device_advises_what_the_launch_can_still_change():
    from bitdistill.pipeline.memory import Device, device_lines

    gib = 2**30
    small = [Device("cuda:0 small", 80 * gib)]
    (ddp,) = device_lines({"distill": 103 * gib}, small, Launch(8))[1:]
    assert ddp.startswith("  warning: distill needs ~103.00 GiB per device, more than the 80.00 GiB of cuda:0")
    assert "FSDP over several GPUs (configs/accelerate/fsdp.yaml)" in ddp
    (fsdp,) = device_lines({"distill": 103 * gib}, small, Launch(8, fsdp=True))[1:]
    assert "or use more GPUs or GPUs with more memory" in fsdp and "fsdp.yaml" not in fsdp
    assert device_lines({"distill": 23 * gib}, small, Launch(8, fsdp=True)) == [
        "  devices: 1 visible, smallest cuda:0 small with 80.00 GiB"
    ]
