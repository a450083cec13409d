"""Distillation losses of BitNet Distillation: logits KD and MiniLM-v2 attention-relation KD.

Everything is computed in float32 whatever the model dtype (bf16 softmax/KL lose too much precision).
The defaults reproduce the authors' training code (microsoft/BitNet PR #382, `CustomDistillSeq2SeqTrainer`);
docs/losses.md lists every difference from the paper's text and from that code.

Logits KD (the paper's L_LD), with p = softmax(z / τ):
    L_LD = τ² · (1 / |M|) Σ_{(b,t) ∈ M} KL(p_teacher[b,t] ‖ p_student[b,t])
the KL *summed over the vocabulary* and *averaged over the positions in M* (`batchmean` over those rows).
M (`kd_positions`): "all" = every non-pad token, prompt included (the authors' code); "targets" = only the
positions whose logits predict a target token.

Attention-relation KD (the paper's L_AD, MiniLM-v2 self-attention relations), per X ∈ {Q, K, V} of one layer:
split X [B, T, D] into A_r relation heads of width d_r = D / A_r, then (`relation`):
  "cosine" (the authors' code): x̂ = x / ‖x‖₂ per head and token,
      R_X[b, a] = softmax_keys(X̂_a X̂_aᵀ)       (temperature 1, every key, no mask)
      L_X = (1 / (B·A_r·T)) Σ_{b,a,t} KL(R_X^teacher[b,a,t] ‖ R_X^student[b,a,t])   (padding rows included)
      L_AD = (L_Q + L_K + L_V) / A_r              (the code divides once more by layers × A_r; one layer)
  "scaled" (bitdistill's earlier definition): R_X[b, a] = softmax_keys(X_a X_aᵀ / √d_r) with padded keys
      masked out, L_X = mean over heads and real query tokens of the KL, L_AD = L_Q + L_K + L_V.
A_r is chosen independently of the models' head counts, so teacher and student may differ in hidden size
and in their query / key-value widths (GQA): each side uses its own d_r.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..config.choices import KD_POSITIONS, RELATIONS
from ..data.encode import IGNORE_INDEX
from ..errors import BitDistillError
from .capture import unwrap

QKV = Sequence[torch.Tensor]
_MASKED = -1e9  # relation score of a masked key (see _scaled_relation_log_probs)
AUTHORS_RELATION_HEADS = 32  # `split_head_number` in the authors' recipes


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


def default_relation_heads(widths: Sequence[int], max_heads: int = AUTHORS_RELATION_HEADS) -> int:
    """The largest A_r <= max_heads (the authors' 32) that divides every q/k/v width.

    With GQA the k/v width is smaller than the q width (SmolLM2: 576 vs 192); A_r only has to split each
    tensor evenly (SmolLM2 and Qwen3 -> 32, the authors' value).
    """
    return max(a for a in valid_relation_heads(*widths) if a <= max_heads)


def _split_heads(x: torch.Tensor, heads: int, who: str) -> torch.Tensor:
    """x [B, T, D] -> [B, A_r, T, D / A_r] float32."""
    b, t, d = x.shape
    if d % heads:
        raise BitDistillError(
            f"attention distillation: num_relation_heads={heads} does not divide the {who} width {d}; "
            f"choose A_r that divides every q/k/v width of teacher and student"
        )
    return x.float().reshape(b, t, heads, d // heads).transpose(1, 2)


def _cosine_relation_log_probs(x: torch.Tensor, heads: int, who: str) -> torch.Tensor:
    """log softmax_keys(x̂ x̂ᵀ) with x̂ L2-normalised per head and token: [B, A_r, T, T] float32."""
    xh = F.normalize(_split_heads(x, heads, who), p=2, dim=-1)
    return F.log_softmax(xh @ xh.transpose(-1, -2), dim=-1)


def _scaled_relation_log_probs(
    x: torch.Tensor, heads: int, key_mask: torch.Tensor | None, causal: bool, who: str
) -> torch.Tensor:
    """log R for x [B, T, D]: [B, A_r, T, T] float32; masked keys get probability exactly 0."""
    xh = _split_heads(x, heads, who)  # [B, A, T, d_r]
    b, _, t, dr = xh.shape
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
    num_relation_heads: int = AUTHORS_RELATION_HEADS,
    causal: bool = False,
    relation: str = "cosine",
) -> torch.Tensor:
    """MiniLM-v2 relation KD over Q, K, V; see the module docstring for both `relation` definitions.

    `teacher_qkv` / `student_qkv`: (Q, K, V), each [B, T, D] (D may differ per tensor and per model).
    `mask`: [B, T] attention mask (1 = real token; None = all real). "scaled" masks padded positions as keys
    and excludes them as queries, and `causal=True` also masks keys after the query; "cosine" (the authors'
    code) reads neither: every position is a query and a key.
    """
    if relation not in RELATIONS:
        raise BitDistillError(f"attention distillation: relation {relation!r} is not one of {RELATIONS}")
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
        if relation == "cosine":
            log_t = _cosine_relation_log_probs(xt.detach(), num_relation_heads, f"teacher {name}")
            log_s = _cosine_relation_log_probs(xs, num_relation_heads, f"student {name}")
            part = (log_t.exp() * (log_t - log_s)).sum(dim=-1).mean()  # batchmean over B·A_r·T rows
        else:
            log_t = _scaled_relation_log_probs(
                xt.detach(), num_relation_heads, key_mask, causal, f"teacher {name}"
            )
            log_s = _scaled_relation_log_probs(xs, num_relation_heads, key_mask, causal, f"student {name}")
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
    # The authors divide the sum over Q, K, V (and layers) by layers × A_r once more; one layer here.
    return total / num_relation_heads if relation == "cosine" else total


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of next-token prediction on the target tokens (labels != -100), mean over tokens."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sorted positions t whose logits some row's cross-entropy reads (labels[:, t + 1] != -100).

    Task batches are right-padded and length-grouped, so the targets of all rows sit in a few of the
    batch's ~20-40 columns: only those need the vocabulary projection.
    """
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()


def causal_lm_loss_at(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`causal_lm_loss` for logits [B, P, V] computed only at `positions` (see `target_positions`)."""
    targets = labels[:, positions + 1]
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def _keeps_logit_subset(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes transformers' `logits_to_keep` (every HF causal LM of ours does)."""
    return "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters


def task_ce(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the target tokens of `batch` (input_ids, attention_mask, labels) under `model`.

    Equal to `causal_lm_loss(model(...).logits, labels)`, but the LM head runs only at the positions the
    loss reads when the model supports it: on SmolLM2 the 49k-word head is ~20 % of a forward's matmuls
    and its float32 log-softmax over every token is pure waste for a one-word label.
    """
    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if not _keeps_logit_subset(model):
        return causal_lm_loss(model(**inputs).logits, labels)
    positions = target_positions(labels)
    return causal_lm_loss_at(model(**inputs, logits_to_keep=positions).logits, labels, positions)


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
    num_relation_heads: int = AUTHORS_RELATION_HEADS,
    causal_relations: bool = False,
    ce_weight: float = 1.0,
    kd_positions: str = "all",
    relation: str = "cosine",
) -> dict[str, torch.Tensor]:
    """BitDistill objective `L = CE + λ·L_LD + γ·L_AD` (λ = kd_weight, γ = ad_weight).

    Returns {"loss", "ce", "kd", "ad"} (unweighted parts, still attached to the graph; log them with
    `.item()`); a part whose weight is 0 or whose inputs are None is a zero tensor and is not computed.
    CE acts on target tokens (`labels != -100`, shifted as the model predicts); KD on every non-pad token
    (`kd_positions="all"`, needs `attention_mask`) or on the target positions ("targets"); AD on the chosen
    layer's Q/K/V (see `attention_relation_loss` for `relation`).
    """
    if kd_positions not in KD_POSITIONS:
        raise BitDistillError(
            f"logits distillation: kd_positions {kd_positions!r} is not one of {KD_POSITIONS}"
        )
    zero = student_logits.new_zeros((), dtype=torch.float32)
    ce = causal_lm_loss(student_logits, labels) if ce_weight else zero
    kd = zero
    if kd_weight and teacher_logits is not None:
        positions = target_mask(labels) if kd_positions == "targets" else attention_mask
        kd = logits_kd_loss(student_logits, teacher_logits, positions, temperature)
    ad = zero
    if ad_weight and teacher_qkv is not None and student_qkv is not None:
        ad = attention_relation_loss(
            teacher_qkv, student_qkv, attention_mask, num_relation_heads, causal_relations, relation
        )
    loss = ce_weight * ce + kd_weight * kd + ad_weight * ad
    return {"loss": loss, "ce": ce, "kd": kd, "ad": ad}
