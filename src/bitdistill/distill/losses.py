"""Distillation losses of BitNet Distillation: logits KD and MiniLM-v2 attention-relation KD.

Everything is computed in float32 whatever the model dtype (bf16 softmax/KL lose too much precision).

Logits KD (the paper's L_LD), with p = softmax(z / τ):
    L_LD = τ² · (1 / |M|) Σ_{(b,t) ∈ M} KL(p_teacher[b,t] ‖ p_student[b,t])
M is the set of masked-in positions: the KL is *summed over the vocabulary* and *averaged over positions*
(not over batch rows and not over vocabulary entries). τ² keeps gradient magnitudes comparable across τ.

Attention-relation KD (the paper's L_AD, MiniLM-v2 multi-head self-attention relations), per X ∈ {Q, K, V}
of one layer: split the projection output [B, T, D] into A_r relation heads of width d_r = D / A_r,
    R_X[b, a] = softmax_keys(X_a X_aᵀ / √d_r)          (padded keys masked out)
    L_X = (1 / (A_r · |valid queries|)) Σ_{a} Σ_{(b,t) valid} KL(R_X^teacher[b,a,t] ‖ R_X^student[b,a,t])
    L_AD = L_Q + L_K + L_V
A_r is chosen independently of the models' head counts, so teacher and student may differ in hidden size
and in their query / key-value widths (GQA): each side uses its own d_r.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data.encode import IGNORE_INDEX
from ..errors import BitDistillError

QKV = Sequence[torch.Tensor]
_MASKED = -1e9  # relation score of a masked key (see _relation_log_probs)


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True where the logits at t predict a target token (labels[t + 1] != -100).

    Causal LMs predict token t+1 from position t, so this is the mask `logits_kd_loss` wants for logits
    aligned with `labels` as the model returns them.
    """
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def logits_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None,
    temperature: float = 5.0,
) -> torch.Tensor:
    """τ² · mean over masked positions of KL(softmax(teacher/τ) ‖ softmax(student/τ)); see module docs.

    `mask` ([B, T], bool or 0/1; None = every position) selects positions before any softmax, so only
    target positions pay for the vocabulary-wide float32 work. The teacher gets no gradient.
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise BitDistillError(
            f"logits distillation needs the same vocabulary: student has {student_logits.shape[-1]} logits, "
            f"teacher {teacher_logits.shape[-1]}. Use a teacher with the student's tokenizer (and vocab size)"
        )
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise BitDistillError(
            f"logits distillation: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} cover different positions; feed both the same batch"
        )
    if temperature <= 0:
        raise BitDistillError(f"distillation temperature must be positive, got {temperature}")
    if mask is not None:
        m = mask.to(torch.bool)
        s, t = student_logits[m], teacher_logits[m]
    else:
        s = student_logits.reshape(-1, student_logits.shape[-1])
        t = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    if s.shape[0] == 0:
        return student_logits.sum() * 0.0  # no target positions: a zero that keeps the graph
    log_p_s = F.log_softmax(s.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(t.detach().float() / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum") / s.shape[0]
    return kl * temperature**2


def valid_relation_heads(*widths: int) -> list[int]:
    """Relation-head counts A_r that divide every width (for error messages and config help)."""
    g = 0
    for w in widths:
        g = math.gcd(g, int(w))
    return [a for a in range(1, g + 1) if g % a == 0]


def default_relation_heads(widths: Sequence[int], max_heads: int) -> int:
    """The largest A_r <= max_heads (the student's head count) that divides every q/k/v width.

    With GQA the k/v width is smaller than the q width (SmolLM2: 576 vs 192), so the head count itself
    (9) need not divide both; A_r only has to split each tensor evenly (SmolLM2 -> 8).
    """
    return max(a for a in valid_relation_heads(*widths) if a <= max_heads)


def _relation_log_probs(
    x: torch.Tensor, heads: int, key_mask: torch.Tensor | None, causal: bool, who: str
) -> torch.Tensor:
    """log R for x [B, T, D]: [B, A_r, T, T] float32; masked keys get probability exactly 0."""
    b, t, d = x.shape
    if d % heads:
        raise BitDistillError(
            f"attention distillation: num_relation_heads={heads} does not divide the {who} width {d}; "
            f"choose A_r that divides every q/k/v width of teacher and student"
        )
    dr = d // heads
    xh = x.float().reshape(b, t, heads, dr).transpose(1, 2)  # [B, A, T, d_r]
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(dr)
    allowed = torch.ones((b, 1, t, t), dtype=torch.bool, device=x.device)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones((t, t), dtype=torch.bool, device=x.device).tril()
    # A query with no valid key (a row that is all padding) keeps every key: it is excluded from the mean
    # anyway. Masked keys get a large finite score rather than -inf: exp() makes their probability exactly
    # 0, and 0 · log p stays 0 instead of NaN, so the KL needs no extra masking tensors.
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~allowed, _MASKED)
    return F.log_softmax(scores, dim=-1)


def attention_relation_loss(
    teacher_qkv: QKV,
    student_qkv: QKV,
    mask: torch.Tensor | None,
    num_relation_heads: int,
    causal: bool = False,
) -> torch.Tensor:
    """MiniLM-v2 relation KD summed over Q, K, V; see the module docstring.

    `teacher_qkv` / `student_qkv`: (Q, K, V) projection outputs, each [B, T, D] (D may differ per tensor
    and per model). `mask`: [B, T] attention mask (1 = real token; None = all real). Padded positions are
    masked as keys and excluded as queries. `causal=True` also masks keys after the query (the relation
    then only looks where the decoder's attention can); the default follows MiniLM-v2 (all keys).
    """
    if len(teacher_qkv) != len(student_qkv):
        raise BitDistillError(
            f"attention distillation: teacher gives {len(teacher_qkv)} tensors, student {len(student_qkv)}"
        )
    if num_relation_heads < 1:
        raise BitDistillError(f"num_relation_heads must be >= 1, got {num_relation_heads}")
    key_mask = mask.to(torch.bool) if mask is not None else None
    total = None
    for name, xt, xs in zip("QKV", teacher_qkv, student_qkv, strict=False):
        if xt.shape[:2] != xs.shape[:2]:
            raise BitDistillError(
                f"attention distillation: teacher {name} {tuple(xt.shape)} and student {name} "
                f"{tuple(xs.shape)} differ in batch or length; feed both the same batch"
            )
        if key_mask is not None and key_mask.shape != xs.shape[:2]:
            raise BitDistillError(
                f"attention distillation: mask {tuple(key_mask.shape)} vs {name} {tuple(xs.shape)}"
            )
        log_t = _relation_log_probs(xt.detach(), num_relation_heads, key_mask, causal, f"teacher {name}")
        log_s = _relation_log_probs(xs, num_relation_heads, key_mask, causal, f"student {name}")
        # KL over keys; masked keys have p_t = 0 exactly and finite logs, so they add 0.
        kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)  # [B, A, T]
        if key_mask is not None:
            q = key_mask[:, None, :].expand_as(kl)
            part = kl[q].sum() / q.sum().clamp(min=1)
        else:
            part = kl.mean()
        total = part if total is None else total + part
    if total is None:
        raise BitDistillError("attention distillation: no Q/K/V tensors were given")
    return total


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of next-token prediction on the target tokens (labels != -100), mean over tokens."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def distill_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    teacher_qkv: QKV | None = None,
    student_qkv: QKV | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    temperature: float = 5.0,
    kd_weight: float = 10.0,
    ad_weight: float = 1e5,
    num_relation_heads: int = 8,
    causal_relations: bool = False,
    ce_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """BitDistill objective `L = CE + λ·L_LD + γ·L_AD` (λ = kd_weight, γ = ad_weight).

    Returns {"loss", "ce", "kd", "ad"} (unweighted parts, still attached to the graph; log them with
    `.item()`); a part whose weight is 0 or whose inputs are None is a zero
    tensor and is not computed. CE and KD act on target tokens only (`labels != -100`, shifted as the
    model predicts); AD covers every real token of the chosen layer (`attention_mask`).
    """
    zero = student_logits.new_zeros((), dtype=torch.float32)
    ce = causal_lm_loss(student_logits, labels) if ce_weight else zero
    kd = zero
    if kd_weight and teacher_logits is not None:
        kd = logits_kd_loss(student_logits, teacher_logits, target_mask(labels), temperature)
    ad = zero
    if ad_weight and teacher_qkv is not None and student_qkv is not None:
        ad = attention_relation_loss(
            teacher_qkv, student_qkv, attention_mask, num_relation_heads, causal_relations
        )
    loss = ce_weight * ce + kd_weight * kd + ad_weight * ad
    return {"loss": loss, "ce": ce, "kd": kd, "ad": ad}
