"""The one place that lists each kernel's launch configurations.

:class:`fastgen.launch.Kernel` launches a kernel with one config directly and wraps a kernel with several in
``triton.autotune`` (timed once per key on the GPU); under the interpreter there is no driver to time with, so
only the first config is used. The sm_90 compile check
(:mod:`fastgen.compile_check`) walks the same lists, so every config an op can launch is compiled in CI.
"""

from __future__ import annotations

import triton

from fastgen.dispatch import interpreting

KERNEL_CONFIGS: dict[str, list[triton.Config]] = {
    # Memory-bound tiles of 512 elements, 4 per thread. 1024-element tiles at 4 and 8 warps were tried
    # first: the Philox variants then took up to 255 registers with small spills on sm_90/sm_80, and every
    # extra config doubles the compile check. Add a config here once a GPU measurement shows it pays.
    "reparameterize_kl_forward_kernel": [triton.Config({}, num_warps=4)],
    "reparameterize_kl_backward_kernel": [triton.Config({}, num_warps=4)],
    "reparameterize_kl_column_kernel": [triton.Config({}, num_warps=4)],
    # Implicit-GEMM convolutions: tiles come from the channel counts (fastgen.ops.tap_conv); 4 warps are one
    # Hopper warpgroup (one HGMMA per [64, N] tile), 3 stages let the loads of the next taps run ahead.
    "tap_conv_gemm_kernel": [triton.Config({}, num_warps=4, num_stages=3)],
    "tap_conv_weight_grad_kernel": [triton.Config({}, num_warps=4, num_stages=3)],
    "tap_conv_pack_weight_kernel": [triton.Config({}, num_warps=4)],
    "tap_conv_unpack_grad_kernel": [triton.Config({}, num_warps=4)],
    # GAN losses on logits (launch-bound at usual sizes; 512-element steps, 256 for float64) and gradient
    # penalties (memory-bound row sums of squares in 1024-element tiles): 4 warps, at most 72 registers.
    "gan_logit_loss_forward_kernel": [triton.Config({}, num_warps=4)],
    "gan_logit_loss_backward_kernel": [triton.Config({}, num_warps=4)],
    "gan_gradient_penalty_sum_squares_kernel": [triton.Config({}, num_warps=4)],
    "gan_gradient_penalty_finish_kernel": [triton.Config({}, num_warps=4)],
    "gan_gradient_penalty_backward_kernel": [triton.Config({}, num_warps=4)],
    # Gumbel-softmax rows: 512-element tiles (256 in float64; one row of up to 1024), 4 elements per thread;
    # Philox and two logs per element, then a row softmax. Add configs once a GPU measurement shows they pay.
    "gumbel_softmax_forward_kernel": [triton.Config({}, num_warps=4)],
    "gumbel_softmax_backward_kernel": [triton.Config({}, num_warps=4)],
    "gumbel_noise_kernel": [triton.Config({}, num_warps=4)],
    # PixelCNN losses: one sub-pixel (cross-entropy) or pixel (DMOL: [16 components, 64 pixels] tiles) per
    # thread at 4 warps, so that reductions over the levels/components stay in registers or within a warp.
    "pixel_cross_entropy_forward_kernel": [triton.Config({}, num_warps=4)],
    "pixel_cross_entropy_backward_kernel": [triton.Config({}, num_warps=4)],
    "dmol_nll_forward_kernel": [triton.Config({}, num_warps=4)],
    "pixel_losses_scale_kernel": [triton.Config({}, num_warps=4)],
    "dmol_sample_kernel": [triton.Config({}, num_warps=4)],
    # Gated activation: elementwise on [32 channels, 32 pixels] tiles (1024 outputs, 512 in float64), 8 outputs
    # per thread at 4 warps. Add configs once a GPU measurement shows they pay.
    "gated_activation_forward_kernel": [triton.Config({}, num_warps=4)],
    "gated_activation_backward_kernel": [triton.Config({}, num_warps=4)],
}


def kernel_name(kernel) -> str:
    """The Python name of a @triton.jit kernel (also when wrapped by the interpreter)."""
    return getattr(kernel, "fn", kernel).__name__


def configs_for(kernel) -> list[triton.Config]:
    """The configs that ``kernel`` is launched with here: all of them on a GPU, the first under the interpreter."""
    configs = KERNEL_CONFIGS[kernel_name(kernel)]
    return configs[:1] if interpreting() else list(configs)
