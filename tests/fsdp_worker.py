"""`accelerate launch --config_file configs/accelerate/fsdp.yaml tests/fsdp_worker.py OUT.json`: the pieces of
train/sharding.py on a tiny BitNet Qwen3 (tied embeddings) sharded over the launched processes, each checked
against an unsharded copy of the same model in the same process. Rank 0 writes the numbers to OUT.json for
tests/test_fsdp.py to assert on.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

from bitdistill.distill.capture import QKVCapture
from bitdistill.distill.losses import causal_lm_loss
from bitdistill.model.convert import to_bitnet
from bitdistill.model.io import write_weights
from bitdistill.quant.bitlinear import BitLinear
from bitdistill.train.checkpoint import load_weights
from bitdistill.train.distributed import across_ranks, init_group, rank_and_world
from bitdistill.train.sharding import (
    fsdp_plan,
    gather_optimizer,
    gather_weights,
    scatter_optimizer,
    shard,
)

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_model  # noqa: E402


def diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def main(out: str) -> None:
    torch.set_num_threads(1)
    init_group()
    rank, world = rank_and_world()
    report: dict = {"world": world, "plan": fsdp_plan() is not None}
    ref = to_bitnet(tiny_model("qwen3", seed=3, tie_word_embeddings=True))
    model = shard(copy.deepcopy(ref), torch.device("cpu"), fsdp_plan())
    report["tied_after_sharding"] = model.lm_head.weight is model.model.embed_tokens.weight

    # 1. Each rank holds about 1/world of every parameter.
    local = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    report["local_fractions"] = [None] * world
    torch.distributed.all_gather_object(report["local_fractions"], local / total)

    # 2. BitLinear's forward sees the whole weight matrix, as a plain tensor.
    seen = []
    bl = model.model.layers[0].self_attn.q_proj
    assert isinstance(bl, BitLinear)
    bl.register_forward_pre_hook(lambda m, _: seen.append((tuple(m.weight.shape), type(m.weight).__name__)))
    report["full_shape"] = list(ref.model.layers[0].self_attn.q_proj.weight.shape)

    # 3. Forward and the attention-relation capture on a wrapped layer equal the unsharded model's.
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(4, 128, (2, 12), generator=g)  # this rank's half of the global batch
    mask = torch.ones_like(ids)
    with QKVCapture(model, -1) as cap_s, QKVCapture(ref, -1) as cap_r:
        logits_s = model(input_ids=ids, attention_mask=mask).logits
        qkv_s = cap_s.qkv
        logits_r = ref(input_ids=ids, attention_mask=mask).logits
        qkv_r = cap_r.qkv
    report["seen"] = seen[:1]
    report["logits_diff"] = float((logits_s - logits_r).abs().max())
    report["qkv_diff"] = max(float((a - b).abs().max()) for a, b in zip(qkv_s, qkv_r, strict=True))

    # 4. Gradients: the sharded step over two half batches vs the unsharded one over the whole batch.
    everything = [None] * world
    torch.distributed.all_gather_object(everything, ids)
    causal_lm_loss(logits_s, ids).backward()
    causal_lm_loss(ref(input_ids=torch.cat(everything)).logits, torch.cat(everything)).backward()
    grads = {n: full(p.grad) for n, p in model.named_parameters()}
    report["grad_diff"] = diff(grads, {n: p.grad for n, p in ref.named_parameters()})

    # 5. Weights and optimizer state gathered, written by rank 0, read back and scattered.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt.step()
    tmp = Path(out).parent
    weights = gather_weights(model)
    optim = gather_optimizer(model, opt)
    if rank == 0:
        write_weights(weights, tmp / "w.safetensors")
        torch.save(optim, tmp / "opt.pt")
        report["gathered_keys"] = sorted(weights)
        write_weights(ref, tmp / "ref.safetensors")  # what one process writes (safetensors' save_model)
        report["save_model_keys"] = sorted(load_file(tmp / "ref.safetensors"))
        report["optimizer_entries"] = len(optim["state"])
    torch.distributed.barrier()
    stepped = {n: full(p.detach()).clone() for n, p in model.named_parameters()}
    moments = {n: full(opt.state[p]["exp_avg"]).clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    model.zero_grad(set_to_none=True)  # as in a resumed run, which has not computed gradients yet
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    report["load_missing"] = load_weights(model, tmp / "w.safetensors")
    scatter_optimizer(model, fresh, tmp / "opt.pt")
    report["weights_roundtrip"] = diff({n: full(p.detach()) for n, p in model.named_parameters()}, stepped)
    report["moments_roundtrip"] = diff(
        {n: full(fresh.state[p]["exp_avg"]) for n, p in model.named_parameters()}, moments
    )
    report["still_tied"] = model.lm_head.weight is model.model.embed_tokens.weight

    # 6. Evaluation split over ranks with an odd count: every rank runs as many sharded forwards.
    model.eval()
    ref.load_state_dict({n: v for n, v in stepped.items()}, strict=False)
    ref.eval()
    rows = [torch.randint(4, 128, (1, 6), generator=torch.Generator().manual_seed(100 + i)) for i in range(3)]
    with torch.no_grad():
        got = across_ranks(lambda part: [model(input_ids=r).logits for r in part], rows)
        want = [ref(input_ids=r).logits for r in rows]
    report["eval_diff"] = max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True))

    # 7. A frozen teacher sharded in bf16: forward under no_grad equals the replicated one.
    teacher_ref = tiny_model("qwen3", seed=5).eval().requires_grad_(False).to(torch.bfloat16)
    teacher = shard(copy.deepcopy(teacher_ref), torch.device("cpu"))
    with torch.no_grad():
        t_diff = (
            (teacher(input_ids=ids).logits.float() - teacher_ref(input_ids=ids).logits.float()).abs().max()
        )
    report["teacher_diff"] = float(t_diff)
    if rank == 0:
        Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
