"""The cross-entropy of a chunk of a PixelCNN output head's logits, with its gradient written over them.

The fused head (``fastgen.conv1x1_cross_entropy``) computes the logits of the last 1x1 convolution a chunk of images
at a time, [B', C * L, H, W] (channel c's L levels at channels c*L .. c*L + L - 1, the channel groups of a
masked convolution); this kernel turns one chunk into per-sub-pixel losses and, in place, into d loss / d logits,
which the chunk's backward convolution reads. No [B, C * L, H, W] tensor is ever stored.
"""

import triton
import triton.language as tl

from .pixel_losses import _subpixel_offsets


@triton.jit
def conv1x1_cross_entropy_kernel(
    LOGITS,  # [B', L, C, H, W] logits of one chunk of images, through strides; the gradient if WRITE_GRAD
    TARGETS,  # [B', C, H, W] integer targets in [0, L), through strides
    SCALE,  # [B', C, H, W] gradient scale per sub-pixel (HAS_SCALE: the grad_output of reduction "none")
    LOSS,  # [B' * C * H * W] output (COMPUTE): loss of sub-pixel n = ((b * C + c) * H + h) * W + w
    n_subpixels,  # B' * C * H * W
    n_levels,  # L
    channels, height, width,  # C, H, W
    stride_x_b, stride_x_l, stride_x_c, stride_x_h, stride_x_w,  # strides of LOGITS
    stride_t_b, stride_t_c, stride_t_h, stride_t_w,  # strides of TARGETS
    stride_s_b, stride_s_c, stride_s_h, stride_s_w,  # strides of SCALE
    weight: "fp64",  # the gradient's factor: 1 / N for a mean, else 1
    WRITE_GRAD: tl.constexpr,  # overwrite the logits with weight * scale * (softmax - onehot(target))
    HAS_SCALE: tl.constexpr,  # read SCALE (else a scale of 1)
    ONE_TILE: tl.constexpr,  # L <= BLOCK_L: a sub-pixel's logits are loaded once and kept in registers
    COMPUTE: tl.constexpr,  # arithmetic dtype (tl.float32 or tl.float64)
    BLOCK_N: tl.constexpr,  # sub-pixels per program
    BLOCK_L: tl.constexpr,  # levels per step
):
    """loss_n = logsumexp(logits_n) - logits_n[target_n] (nan for a target outside [0, L), checked on the int64
    value); with WRITE_GRAD, logits_n := weight * scale_n * (softmax(logits_n) - onehot(target_n)) in place."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # int32: the launcher keeps a chunk under 2**31
    n_mask = n < n_subpixels
    x_offsets = _subpixel_offsets(n, channels, height, width, stride_x_b, stride_x_c, stride_x_h, stride_x_w)
    t_offsets = _subpixel_offsets(n, channels, height, width, stride_t_b, stride_t_c, stride_t_h, stride_t_w)
    targets = tl.load(TARGETS + t_offsets, mask=n_mask, other=0)
    valid = (targets >= 0) & (targets < n_levels)
    targets = tl.where(valid, targets, -1).to(tl.int32)
    scale = tl.full([BLOCK_N], weight, COMPUTE)
    if HAS_SCALE:
        s_offsets = _subpixel_offsets(n, channels, height, width, stride_s_b, stride_s_c, stride_s_h, stride_s_w)
        scale *= tl.load(SCALE + s_offsets, mask=n_mask, other=0.0).to(COMPUTE)
    scale = tl.where(valid, scale, float("nan"))
    levels = tl.arange(0, BLOCK_L)
    if ONE_TILE:
        mask = n_mask[:, None] & (levels < n_levels)[None, :]
        offsets = x_offsets[:, None] + levels.to(tl.int64)[None, :] * stride_x_l
        x = tl.load(LOGITS + offsets, mask=mask, other=float("-inf")).to(COMPUTE)
        m = tl.max(x, axis=1)
        m = tl.where(m == float("-inf"), 0.0, m)  # sub-pixels past the chunk: no (-inf) - (-inf)
        e = tl.exp(x - m[:, None])
        s = tl.where(n_mask, tl.sum(e, axis=1), 1.0)  # sub-pixels past the chunk: no log(0), no 0 / 0
        target_logit = tl.sum(tl.where((levels[None, :] == targets[:, None]) & mask, x, 0.0), axis=1)
        if WRITE_GRAD:
            grad = e / s[:, None] - tl.where(levels[None, :] == targets[:, None], 1.0, 0.0)
            tl.store(LOGITS + offsets, (grad * scale[:, None]).to(LOGITS.dtype.element_ty), mask=mask)
    else:
        m = tl.full([BLOCK_N], float("-inf"), COMPUTE)
        s = tl.zeros([BLOCK_N], COMPUTE)
        target_logit = tl.zeros([BLOCK_N], COMPUTE)
        for start in range(0, n_levels, BLOCK_L):
            level = start + levels
            mask = n_mask[:, None] & (level < n_levels)[None, :]
            offsets = x_offsets[:, None] + level.to(tl.int64)[None, :] * stride_x_l
            x = tl.load(LOGITS + offsets, mask=mask, other=float("-inf")).to(COMPUTE)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf) in masked rows
            s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe[:, None]), axis=1)
            m = m_new
            target_logit += tl.sum(tl.where((level[None, :] == targets[:, None]) & mask, x, 0.0), axis=1)
        m = tl.where(m == float("-inf"), 0.0, m)
        s = tl.where(n_mask, s, 1.0)  # sub-pixels past the chunk: no log(0), no 0 / 0
        if WRITE_GRAD:
            for start in range(0, n_levels, BLOCK_L):
                level = start + levels
                mask = n_mask[:, None] & (level < n_levels)[None, :]
                offsets = x_offsets[:, None] + level.to(tl.int64)[None, :] * stride_x_l
                x = tl.load(LOGITS + offsets, mask=mask, other=0.0).to(COMPUTE)
                grad = tl.exp(x - m[:, None]) / s[:, None] - tl.where(level[None, :] == targets[:, None], 1.0, 0.0)
                tl.store(LOGITS + offsets, (grad * scale[:, None]).to(LOGITS.dtype.element_ty), mask=mask)
    # (max - target) + log(sum): no rounding of a large max + log(sum) before the difference (as log_softmax)
    loss = tl.where(valid, (m - target_logit) + tl.log(s), float("nan"))
    tl.store(LOSS + n, loss, mask=n_mask)
