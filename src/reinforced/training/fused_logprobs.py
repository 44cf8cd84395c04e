"""Fused LM head + chosen-token logprob + entropy, in token chunks: no [tokens, vocab] tensor of the batch.

For hidden states h [N, H], head weight W [V, H] (bias b [V] or none), targets y [N] and temperature tau,

    z = (h W^T + b) / tau                     logits of one token, [V]
    logprob = z[y] - lse(z)                   lse(z) = log sum_v exp(z_v)
    H = lse(z) - sum_v p_v z_v                p = softmax(z), so E_p[z] = lse(z) - H

and their gradients with respect to z (for upstream gradients g_lp, g_H of one token):

    d logprob / dz = onehot(y) - p
    d H / dz       = -p * (z - E_p[z])
    dz = g_lp (onehot(y) - p) - g_H p (z - E_p[z]),   d(hW^T + b) = dz / tau,
    dh = d(hW^T + b) W,   dW = d(hW^T + b)^T h,   db = sum over tokens of d(hW^T + b).

The forward and the backward loop over chunks of ``chunk_size`` tokens; the backward recomputes each chunk's
logits from h and W instead of keeping them, so the largest live tensors are a few [chunk, V] float32 buffers
plus dW, never [N, V]. This is the idea of Liger-Kernel's fused linear cross-entropy (Hsu et al. 2024,
arXiv:2410.10989) and of verl's fused kernels (``verl/utils/kernel/linear_cross_entropy.py``, the
``use_fused_kernels`` option), written in plain torch (no Triton) and extended with the entropy.

Precision follows the plain path: under autocast the chunk's logits are computed in the autocast dtype (a
bf16 matmul, as ``nn.Linear`` would), the softmax and everything after in float32; dh and dW are computed
with the same matmul dtype, dW accumulated across chunks in float32.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_BYTES = 1 << 26
"""Default chunk size: as many tokens as make one [chunk, V] float32 buffer take 64 MiB (at most two
such buffers are live at a time)."""


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so one [chunk, V] float32 buffer is ``CHUNK_BYTES``.

    >>> default_chunk_size(49152)
    341
    """
    return max(1, CHUNK_BYTES // (4 * vocab_size))


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``nn.Linear`` would compute in here: the autocast dtype inside autocast, else the inputs'."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                  temperature: float) -> torch.Tensor:
    """z = (h W^T + b) / tau of one chunk: matmul in ``dtype``, result float32 [c, V]."""
    z = torch.nn.functional.linear(h.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    return z.float().div_(temperature)


class _FusedLinearLogprob(torch.autograd.Function):
    """autograd Function behind ``fused_linear_logprobs`` (see the module docstring for the formulas)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, temperature: float, with_entropy: bool, entropy_grad: bool,
                chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _matmul_dtype(hidden, weight)
        n = hidden.shape[0]
        logprobs = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_empty(n if with_entropy else 0, dtype=torch.float32)
        expected = torch.empty_like(entropy)  # E_p[z], kept for the entropy's backward
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, n, chunk_size):
                sl = slice(i, i + chunk_size)
                z = _chunk_logits(hidden[sl], weight, bias, dtype, temperature)  # [c, V]
                lse = torch.logsumexp(z, dim=-1)
                logprobs[sl] = z.gather(-1, targets[sl, None]).squeeze(-1) - lse
                if with_entropy:
                    expected[sl] = z.softmax(-1).mul_(z).sum(-1)  # in place: two [c, V] buffers at most
                    entropy[sl] = lse - expected[sl]
        ctx.entropy_grad = with_entropy and entropy_grad
        ctx.save_for_backward(hidden, weight, bias, targets, expected if ctx.entropy_grad else None)
        ctx.dtype, ctx.temperature, ctx.chunk_size = dtype, temperature, chunk_size
        if not ctx.entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, expected = ctx.saved_tensors
        dtype, tau, chunk = ctx.dtype, ctx.temperature, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n = hidden.shape[0]
        g_lp = (grad_logprobs if grad_logprobs is not None else hidden.new_zeros(n)).float()[:, None]  # [N, 1]
        g_ent = grad_entropy.float()[:, None] if ctx.entropy_grad and grad_entropy is not None else None
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        w = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, n, chunk):
                sl = slice(i, i + chunk)
                h = hidden[sl].to(dtype)
                z = _chunk_logits(h, weight, bias, dtype, tau)  # [c, V], recomputed
                dz = z.softmax(-1)  # p, turned into dz in place (two [c, V] buffers at most)
                if g_ent is not None:  # z <- g_H p (z - E_p[z])
                    z.sub_(expected[sl, None]).mul_(dz).mul_(g_ent[sl])
                dz.mul_(-g_lp[sl]).scatter_add_(-1, targets[sl, None], g_lp[sl])  # g_lp (onehot(y) - p)
                if g_ent is not None:
                    dz.sub_(z)
                del z
                dz = dz.div_(tau).to(dtype)  # gradient of the unscaled logits h W^T + b
                if grad_h is not None:
                    grad_h[sl] = (dz @ w).to(hidden.dtype)
                if grad_w is not None:
                    grad_w.add_(dz.t() @ h)
                if grad_b is not None:
                    grad_b.add_(dz.float().sum(0))
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def fused_linear_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
    temperature: float = 1.0, with_entropy: bool = False, entropy_grad: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs [N] of ``targets`` [N] (and entropy [N] or None) under logits (hidden W^T + b) / temperature.

    ``hidden`` [N, H], ``weight`` [V, H], ``bias`` [V] or None. Differentiable in hidden, weight and bias; the
    entropy carries a gradient only with ``entropy_grad`` (an entropy bonus in the loss), as a metric it is
    detached. ``chunk_size`` tokens per chunk (default: ``default_chunk_size(V)``).

    >>> lp, ent = fused_linear_logprobs(torch.ones(2, 3), torch.zeros(4, 3), None, torch.tensor([0, 3]),
    ...                                 with_entropy=True)
    >>> lp.exp(), ent.exp()   # zero weight: uniform over 4 tokens
    (tensor([0.2500, 0.2500]), tensor([4., 4.]))
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for logprobs, got {temperature}")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1] or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"expected hidden [N, H], weight [V, H], targets [N]; got hidden {tuple(hidden.shape)}, "
                         f"weight {tuple(weight.shape)}, targets {tuple(targets.shape)}")
    chunk = chunk_size if chunk_size is not None else default_chunk_size(weight.shape[0])
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk}")
    logprobs, entropy = _FusedLinearLogprob.apply(hidden, weight, bias, targets, float(temperature),
                                                  with_entropy, entropy_grad, chunk)
    return logprobs, (entropy if with_entropy else None)
