"""Distillation losses against hand-written references (python loops over floats, no shared code)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bitdistill.distill import (
    attention_relation_loss,
    distill_loss,
    logits_kd_loss,
    target_mask,
    valid_relation_heads,
)
from bitdistill.errors import BitDistillError


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [x / s for x in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


# -- logits KD --------------------------------------------------------------------------------------------


def naive_kd(student, teacher, mask, tau) -> float:
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            if mask[b][t]:
                p_t = softmax([x / tau for x in teacher[b][t].tolist()])
                p_s = softmax([x / tau for x in student[b][t].tolist()])
                total += kl(p_t, p_s)
                count += 1
    return tau**2 * total / count


@pytest.mark.parametrize("tau", [1.0, 2.0, 5.0])
def test_kd_equals_hand_written_kl_with_tau_squared(tau):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 4, 7, generator=g) * 3
    teacher = torch.randn(2, 4, 7, generator=g) * 3
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)
    got = logits_kd_loss(student, teacher, mask, tau)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(naive_kd(student, teacher, mask.tolist(), tau), rel=1e-5)
    every = torch.ones(2, 4, dtype=torch.bool)
    assert logits_kd_loss(student, teacher, None, tau).item() == pytest.approx(
        naive_kd(student, teacher, every.tolist(), tau), rel=1e-5
    )


def test_kd_toy_distribution_by_hand():
    # Teacher (1/2, 1/2), student (1/4, 3/4) at τ = 1: KL = ½ln(½/¼) + ½ln(½/¾) = ½ln(4/3).
    teacher = torch.log(torch.tensor([[[0.5, 0.5]]]))
    student = torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert logits_kd_loss(student, teacher, None, 1.0).item() == pytest.approx(
        0.5 * math.log(4 / 3), rel=1e-6
    )
    # At τ = 2 the logits are halved before the softmax and the KL is scaled by 4.
    p_t, p_s = softmax([math.log(0.5) / 2] * 2), softmax([math.log(0.25) / 2, math.log(0.75) / 2])
    assert logits_kd_loss(student, teacher, None, 2.0).item() == pytest.approx(4 * kl(p_t, p_s), rel=1e-6)


def test_kd_zero_for_identical_bf16_in_fp32_and_teacher_gets_no_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 11, generator=g)
    assert logits_kd_loss(logits, logits.clone(), None, 5.0).item() == pytest.approx(0.0, abs=1e-6)
    s = (torch.randn(2, 3, 11, generator=g) * 4).bfloat16().requires_grad_()
    t = (torch.randn(2, 3, 11, generator=g) * 4).bfloat16().requires_grad_()
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss = logits_kd_loss(s, t, mask, 5.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(naive_kd(s.float(), t.float(), mask.tolist(), 5.0), rel=1e-5)
    loss.backward()
    assert s.grad is not None and t.grad is None


def test_kd_rejects_different_vocabularies_and_handles_empty_masks():
    with pytest.raises(BitDistillError, match="same vocabulary"):
        logits_kd_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 6), None, 5.0)
    s = torch.randn(1, 2, 5, requires_grad=True)
    loss = logits_kd_loss(s, torch.randn(1, 2, 5), torch.zeros(1, 2, dtype=torch.bool), 5.0)
    assert loss.item() == 0.0
    loss.backward()


def test_target_mask_is_shifted_labels():
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    assert target_mask(labels).tolist() == [[False, True, True, False], [True, False, False, False]]


# -- attention relation KD --------------------------------------------------------------------------------


def naive_relation_loss(teacher_qkv, student_qkv, mask, heads, causal=False) -> float:
    """MiniLM-v2 relation KD, one head, one query position and one key at a time."""
    total = 0.0
    for xt, xs in zip(teacher_qkv, student_qkv, strict=True):
        b_size, t_len = xt.shape[:2]
        per_x, count = 0.0, 0
        for b in range(b_size):
            valid = [t for t in range(t_len) if mask is None or mask[b][t]]
            for a in range(heads):
                rel = []
                for x in (xt, xs):
                    d = x.shape[2] // heads
                    rows = [x[b, t, a * d : (a + 1) * d].tolist() for t in range(t_len)]
                    rel.append((rows, d))
                for q in valid:
                    keys = [k for k in valid if not causal or k <= q]
                    dists = []
                    for rows, d in rel:
                        scores = [
                            sum(u * v for u, v in zip(rows[q], rows[k], strict=True)) / math.sqrt(d)
                            for k in keys
                        ]
                        dists.append(softmax(scores))
                    per_x += kl(dists[0], dists[1])
                    count += 1
        total += per_x / count
    return total


def qkv(g, b, t, d_q, d_kv, scale=1.0):
    return tuple(
        torch.randn(b, t, d, generator=g, dtype=torch.float64).float() * scale for d in (d_q, d_kv, d_kv)
    )


def test_relation_loss_is_zero_for_identical_inputs():
    g = torch.Generator().manual_seed(0)
    x = qkv(g, 2, 6, 32, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    for relation in ("cosine", "scaled"):
        same = attention_relation_loss(x, tuple(t.clone() for t in x), mask, 4, relation=relation)
        assert same.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    ("teacher_dims", "student_dims", "heads"),
    [
        ((32, 32), (32, 32), 4),  # same shapes, MHA
        ((64, 32), (48, 16), 4),  # GQA on both sides, teacher hidden != student hidden
        ((96, 24), (32, 16), 8),  # more relation heads than the models' own heads would suggest
    ],
)
def test_relation_loss_matches_a_naive_loop(teacher_dims, student_dims, heads, causal):
    g = torch.Generator().manual_seed(42)
    teacher = qkv(g, 2, 7, *teacher_dims, scale=1.5)
    student = qkv(g, 2, 7, *student_dims, scale=1.5)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
    got = attention_relation_loss(teacher, student, mask, heads, causal=causal, relation="scaled")
    want = naive_relation_loss(teacher, student, mask.tolist(), heads, causal=causal)
    assert got.item() == pytest.approx(want, rel=1e-4)
    assert attention_relation_loss(teacher, student, None, heads, relation="scaled").item() == pytest.approx(
        naive_relation_loss(teacher, student, None, heads), rel=1e-4
    )


def test_relation_loss_ignores_padding_content_and_gives_finite_gradients():
    g = torch.Generator().manual_seed(3)
    teacher = qkv(g, 2, 5, 32, 16)
    student = [x.clone().requires_grad_() for x in qkv(g, 2, 5, 16, 8)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    base = attention_relation_loss(teacher, student, mask, 2, relation="scaled")
    noisy_teacher = [x.clone() for x in teacher]
    for x in noisy_teacher:
        x[1, 2:] = 1e3  # whatever sits at padded positions must not matter
    assert attention_relation_loss(noisy_teacher, student, mask, 2, relation="scaled").item() == pytest.approx(
        base.item(), rel=1e-6
    )
    base.backward()
    for x in student:
        assert torch.isfinite(x.grad).all()
        assert x.grad[1, 2:].abs().sum() == 0  # padded positions receive no gradient
    all_padding = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert torch.isfinite(attention_relation_loss(teacher, student, all_padding, 2, relation="scaled"))


def test_relation_heads_must_divide_every_width():
    g = torch.Generator().manual_seed(0)
    for relation in ("cosine", "scaled"):
        with pytest.raises(BitDistillError, match="does not divide the student K width 12"):
            attention_relation_loss(qkv(g, 1, 3, 32, 16), qkv(g, 1, 3, 24, 12), None, 8, relation=relation)
    assert valid_relation_heads(576, 192, 2048, 1024) == [1, 2, 4, 8, 16, 32, 64]


# -- combined objective -----------------------------------------------------------------------------------


def test_distill_loss_combines_the_parts():
    g = torch.Generator().manual_seed(7)
    s_logits = torch.randn(2, 5, 13, generator=g, requires_grad=True)
    t_logits = torch.randn(2, 5, 13, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    t_qkv, s_qkv = qkv(g, 2, 5, 16, 8), qkv(g, 2, 5, 8, 8)
    out = distill_loss(
        s_logits, labels, t_logits, t_qkv, s_qkv, attn,
        temperature=2.0, kd_weight=10.0, ad_weight=100.0, num_relation_heads=4,
        kd_positions="targets", relation="scaled",
    )  # fmt: skip
    ce = F.cross_entropy(s_logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), ignore_index=-100)
    # Hand-picked KD positions: logits at t predict labels[t + 1].
    mask = [[False, True, True, True, False], [True, True, False, False, False]]
    kd = naive_kd(s_logits.detach(), t_logits, mask, 2.0)
    ad = naive_relation_loss(t_qkv, s_qkv, attn.tolist(), 4)
    assert out["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert out["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert out["ad"].item() == pytest.approx(ad, rel=1e-4)
    assert out["loss"].item() == pytest.approx(ce.item() + 10 * kd + 100 * ad, rel=1e-5)
    out["loss"].backward()
    assert torch.isfinite(s_logits.grad).all()
    plain = distill_loss(s_logits, labels, kd_weight=0.0, ad_weight=0.0)
    assert plain["loss"].item() == pytest.approx(ce.item(), rel=1e-6) and plain["kd"].item() == 0.0


# -- the authors' definitions (microsoft/BitNet PR #382), the defaults -------------------------------------


def naive_cosine_relation_loss(teacher_qkv, student_qkv, heads) -> float:
    """The authors' L_AD written out: per head, L2-normalised rows, softmax over every key (no mask, τ = 1),
    KL summed over keys and averaged over all B·A_r·T rows (padding included), summed over Q, K, V, / A_r."""
    total = 0.0
    for xt, xs in zip(teacher_qkv, student_qkv, strict=True):
        b_size, t_len = xt.shape[:2]
        rows_kl, count = 0.0, 0
        for b in range(b_size):
            for a in range(heads):
                dists = []
                for x in (xt, xs):
                    d = x.shape[2] // heads
                    rows = []
                    for t in range(t_len):
                        v = x[b, t, a * d : (a + 1) * d].tolist()
                        n = math.sqrt(sum(u * u for u in v))
                        rows.append([u / n for u in v])
                    dists.append(
                        [softmax([sum(u * w for u, w in zip(rows[q], rows[k], strict=True)) for k in range(t_len)])
                         for q in range(t_len)]
                    )  # fmt: skip
                for q in range(t_len):
                    rows_kl += kl(dists[0][q], dists[1][q])
                    count += 1
        total += rows_kl / count
    return total / heads


@pytest.mark.parametrize(
    ("teacher_dims", "student_dims", "heads"), [((32, 32), (32, 32), 4), ((64, 32), (48, 16), 8)]
)
def test_cosine_relation_loss_matches_the_authors_formula(teacher_dims, student_dims, heads):
    g = torch.Generator().manual_seed(5)
    teacher = qkv(g, 2, 6, *teacher_dims, scale=2.0)
    student = qkv(g, 2, 6, *student_dims, scale=2.0)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    want = naive_cosine_relation_loss(teacher, student, heads)
    # The authors' code reads no mask: padding rows and keys count, so the mask changes nothing.
    for m in (mask, None):
        assert attention_relation_loss(teacher, student, m, heads).item() == pytest.approx(want, rel=1e-4)
    # Cosine relations ignore each row's length: rescaling a token's Q/K/V leaves the loss unchanged.
    scaled = tuple(x * torch.linspace(0.5, 3.0, x.shape[1])[None, :, None] for x in student)
    assert attention_relation_loss(teacher, scaled, mask, heads).item() == pytest.approx(want, rel=1e-4)


def test_default_objective_is_the_authors():
    """KD over every non-pad token (prompt included, batchmean over them, τ²), cosine relations, A_r = 32."""
    g = torch.Generator().manual_seed(11)
    s_logits = torch.randn(2, 5, 13, generator=g)
    t_logits = torch.randn(2, 5, 13, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    t_qkv, s_qkv = qkv(g, 2, 5, 64, 32), qkv(g, 2, 5, 64, 32)
    out = distill_loss(s_logits, labels, t_logits, t_qkv, s_qkv, attn, temperature=5.0)
    assert out["kd"].item() == pytest.approx(naive_kd(s_logits, t_logits, attn.tolist(), 5.0), rel=1e-5)
    assert out["ad"].item() == pytest.approx(naive_cosine_relation_loss(t_qkv, s_qkv, 32), rel=1e-4)
    assert out["loss"].item() == pytest.approx(
        out["ce"].item() + 10 * out["kd"].item() + 1e5 * out["ad"].item(), rel=1e-5
    )


def test_unknown_positions_or_relation_are_refused():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 5, generator=g)
    labels = torch.tensor([[-100, 1, 2]])
    with pytest.raises(BitDistillError, match="kd_positions 'prompt'"):
        distill_loss(logits, labels, logits, kd_positions="prompt")
    with pytest.raises(BitDistillError, match="relation 'dot'"):
        attention_relation_loss(qkv(g, 1, 3, 8, 8), qkv(g, 1, 3, 8, 8), None, 2, relation="dot")
