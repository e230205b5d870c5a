"""PixelRNN's Row LSTM recurrence (state-to-state convolution, gates and cell update of every row): launchers,
the autograd Function and the public op.

The input-to-state part runs before, for all rows at once, on the masked-convolution kernels
(:class:`fastgen.nn.RowLSTM`); this op takes its output ``gates_in`` and runs the sequential part on fused
kernels (see :mod:`fastgen.kernels.row_lstm`), in one of two forms: one launch per row forward and one per row
backward, or one persistent launch for all rows each way (a program per image; :func:`persistent_rows` says
which). What a row moves, and why fusing pays: eager PyTorch runs per row a conv1d (reading h_{i-1} and the
weight, writing the [B, 4n, W] state-to-state term), an add with gates_in, four activations, the cell update and
the output (some ten kernels, each a round trip of [B, 4n, W] or [B, n, W] tensors through memory); the fused
kernel reads h_{i-1}, c_{i-1}, the weight and gates_in once and writes h_i, c_i and the pre-activations once.
That is a prediction from counting bytes and launches, not a measurement: no GPU timing of this op exists yet.

The persistent form saves H - 1 launches each way (each ~5-16 us of host time on the lent machine's kind of GPU,
project notes) and pays with parallelism: its grid is B programs, each running the tiles of a row one after
another, where a row's launch spreads them over B * tiles programs.
"""

from __future__ import annotations

import functools
import itertools

import torch
import triton

from fastgen import library, reference
from fastgen.autotune import configs_for
from fastgen.dispatch import backend_for, interpreting
from fastgen.dtypes import FLOAT_DTYPES, compute_dtype, tl_compute_dtype
from fastgen.kernels import row_lstm as kernels
from fastgen.launch import Kernel, cdiv, plan_cache
from fastgen.registry import register_family
from fastgen.validation import check_float_tensor, check_int

MAX_PROGRAMS = 2**31 - 1  # programs on grid axis 0 (B * column blocks)
# persistent_rows: the rule that picks the launch form (unmeasured on a GPU, see there)
PERSISTENT_MAX_TILES = 4  # tiles per image a persistent program may run one after another in each row
DEFAULT_MULTIPROCESSORS = 132  # SMs assumed off CUDA (the interpreter): an H100/H200's count

FAMILY = register_family(
    "row_lstm", __name__, benchmarks="fastgen.benchmarks.bench_row_lstm",
    configs={
        # One row per launch: [BLOCK_W, BLOCK_N] tiles with four gate accumulators (forward) or one (backward).
        # At 4 warps the forward's four [32, 32] float32 accumulators and its gate epilogue spilled (up to 24 B on
        # sm_90) and the backward's 16-bit [32, 32] tiles 40 B on sm_80 (`fastgen verify`): 8 warps for both.
        # Add configs once a GPU measurement shows they pay.
        kernels.row_lstm_forward_kernel: [triton.Config({}, num_warps=8, num_stages=2)],
        kernels.row_lstm_backward_kernel: [triton.Config({}, num_warps=8, num_stages=2)],
        # All rows in one launch: the same tiles in loops over rows and tiles, the same warps.
        kernels.row_lstm_persistent_forward_kernel: [triton.Config({}, num_warps=8, num_stages=2)],
        kernels.row_lstm_persistent_backward_kernel: [triton.Config({}, num_warps=8, num_stages=2)],
    })

_forward_kernel = Kernel(kernels.row_lstm_forward_kernel, key=["n_hidden", "BLOCK_W", "BLOCK_N", "BLOCK_K"])
_backward_kernel = Kernel(kernels.row_lstm_backward_kernel, key=["n_hidden", "BLOCK_W", "BLOCK_N", "BLOCK_K"])
_persistent_forward_kernel = Kernel(kernels.row_lstm_persistent_forward_kernel,
                                    key=["n_hidden", "BLOCK_W", "BLOCK_N", "BLOCK_K"])
_persistent_backward_kernel = Kernel(kernels.row_lstm_persistent_backward_kernel,
                                     key=["n_hidden", "BLOCK_W", "BLOCK_N", "BLOCK_K"])

# Tile sizes (tl.dot needs every tile dimension >= 16 on a GPU), chosen so that no variant spills on sm_90
# (`fastgen verify`): the forward's four [32, 32] float32 accumulators spilled 12-24 B with float32 operands (an FMA
# GEMM, no tensor cores) and float64 tiles of 32 hundreds of bytes, so float32 keeps 16 hidden units per program
# and float64 16 of everything.
COLUMN_BLOCKS = {torch.float16: (16, 32), torch.bfloat16: (16, 32), torch.float32: (16, 32), torch.float64: (16,)}
UNIT_BLOCKS = {torch.float16: (16, 32), torch.bfloat16: (16, 32), torch.float32: (16,), torch.float64: (16,)}


def _block(n: int, blocks: tuple[int, ...]) -> int:
    """The smallest of ``blocks`` that holds ``n`` (columns, hidden units or gate channels), else the largest."""
    return next((b for b in blocks if b >= n), blocks[-1])


@plan_cache
def plan(batch: int, n_hidden: int, width: int, dtype: torch.dtype = torch.float32):
    """(grid, column blocks, (BLOCK_W, BLOCK_N, forward BLOCK_K, backward BLOCK_K, persistent backward BLOCK_K))
    of one row's launch (the persistent kernels run the same tiles, a program per image)."""
    block_w, block_n = _block(width, COLUMN_BLOCKS[dtype]), _block(n_hidden, UNIT_BLOCKS[dtype])
    n_w_blocks = cdiv(width, block_w)
    programs = batch * n_w_blocks
    if programs > MAX_PROGRAMS:
        raise ValueError(f"gates_in: at most {MAX_PROGRAMS} tiles of {block_w} columns are supported, got {programs}")
    block_k = backward_block_k(n_hidden, dtype)
    return (programs, cdiv(n_hidden, block_n)), n_w_blocks, (block_w, block_n, forward_block_k(block_n, dtype), block_k,
                                                              persistent_backward_block_k(block_w, block_n, block_k))


def persistent_rows(batch: int, height: int, tiles: int, multiprocessors: int) -> bool:
    """Whether to run all ``height`` rows in one persistent launch (a program per image) rather than one launch
    per row (``tiles`` programs per image, the per-row grid's second factor times its column blocks).

    Persistent when there is more than one row and either
    * the per-row grid's tiles per image are at most PERSISTENT_MAX_TILES: a program then runs a row's few tiles
      one after another in about what one more launch costs on the host (a [32, 32] tile's GEMMs are a few
      MFLOP; ~5-16 us of host time per launch), or
    * the batch alone fills every multiprocessor: the per-row grid's extra programs then add waves, not
      parallelism, and only the launches differ.
    Otherwise (few images, many tiles per row) one launch per row keeps more of the GPU busy. Unmeasured on a
    GPU: the threshold is a prediction from these counts, not a timing.
    """
    return height > 1 and (tiles <= PERSISTENT_MAX_TILES or batch >= multiprocessors)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; DEFAULT_MULTIPROCESSORS elsewhere (the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_MULTIPROCESSORS


def _use_persistent(persistent: bool | None, batch: int, height: int, grid, device: torch.device) -> bool:
    """``persistent`` when given, else :func:`persistent_rows` for a per-row ``grid`` (B * column blocks,
    hidden-unit blocks)."""
    if persistent is not None:
        return persistent
    tiles = grid[0] // max(batch, 1) * grid[1]
    return persistent_rows(batch, height, tiles, _multiprocessors(device))


def forward_block_k(block_n: int, dtype: torch.dtype) -> int:
    """Hidden units of the row above reduced per step in the forward: BLOCK_N for 16-bit tiles (tensor cores),
    16 for 32/64-bit ones (FMA GEMMs, whose [16, 32] x [32, 32] steps spilled on sm_90, `fastgen verify`)."""
    return block_n if dtype.itemsize == 2 else 16


def backward_block_k(n_hidden: int, dtype: torch.dtype) -> int:
    """Gate channels of the row below reduced per step in the backward: up to 32 for 16-bit tiles, 16 for
    32/64-bit ones (a float32 [32, 32] x [32, 16] step spilled on sm_80, `fastgen verify`)."""
    return _block(4 * n_hidden, COLUMN_BLOCKS[dtype]) if dtype.itemsize == 2 else 16


def persistent_backward_block_k(block_w: int, block_n: int, block_k: int) -> int:
    """The persistent backward's gate channels per step: the per-row kernel's ``block_k``, but at most 16 on
    [32, 32] tiles, where 32 spilled 4-16 B on sm_90 with 16-bit operands (NCHW grad_h; `fastgen verify`: the
    loops over rows and tiles around the same body keep more registers live than one row's launch does)."""
    return min(block_k, 16) if (block_w, block_n) == (32, 32) else block_k


def _upcast(dtype: torch.dtype) -> bool:
    """Under the interpreter bf16 tl.dot multiplies bit patterns: multiply the bf16 operands in fp32 there."""
    return interpreting() and dtype == torch.bfloat16


def _row_lstm_forward(gates_in: torch.Tensor, weight: torch.Tensor, groups: int, keep_gates: bool,
                      persistent: bool | None = None):
    """(hidden [B, n, H, W], cell [B, n, H, W] in the compute dtype, gates [B, 4n, H, W] or None); one launch
    per row, or one for all rows when ``persistent`` (None: :func:`persistent_rows` decides)."""
    batch, four_n, height, width = gates_in.shape
    n = four_n // 4
    hidden = gates_in.new_empty((batch, n, height, width))
    cell = torch.empty((batch, n, height, width), dtype=compute_dtype(gates_in.dtype), device=gates_in.device)
    gates = torch.empty_like(gates_in, memory_format=torch.contiguous_format) if keep_gates else None
    grid, n_w_blocks, (block_w, block_n, block_k, _, _) = plan(batch, n, width, gates_in.dtype)
    z = gates if gates is not None else hidden  # not written without keep_gates
    z_strides = gates.stride() if gates is not None else (0, 0, 0, 0)
    strides = (*gates_in.stride(), weight.stride(0), weight.stride(1), weight.stride(3), *hidden.stride(),
               *cell.stride(), *z_strides)
    constexprs = dict(UPCAST=_upcast(gates_in.dtype), COMPUTE=tl_compute_dtype(gates_in.dtype),
                      BLOCK_W=block_w, BLOCK_N=block_n, BLOCK_K=block_k)
    if _use_persistent(persistent, batch, height, grid, gates_in.device):
        _persistent_forward_kernel[(batch,)](
            gates_in, weight, hidden, cell, z, height, width, n, n // groups, weight.shape[3], n_w_blocks, grid[1],
            int(keep_gates), *strides, **constexprs)
        return hidden, cell, gates
    for row in range(height):
        _forward_kernel[grid](
            gates_in, weight, hidden, cell, z, row, width, n, n // groups, weight.shape[3], n_w_blocks,
            int(keep_gates), *strides, **constexprs)
    return hidden, cell, gates


def _weight_grad(grad_z: torch.Tensor, hidden: torch.Tensor, weight_shape) -> torch.Tensor:
    """dW[q, k, 0, t] = sum over b, rows i >= 1, columns w of dz_i[q, w] h_{i-1}[k, w + t - K//2]: K matmuls
    (in the compute dtype, rounded to the weight's dtype)."""
    four_n, n, _, kernel_w = weight_shape
    acc = compute_dtype(hidden.dtype)
    width = hidden.shape[3]
    dz = grad_z[:, :, 1:].to(acc)
    h = torch.nn.functional.pad(hidden[:, :, :-1].to(acc), (kernel_w // 2, kernel_w // 2))
    taps = [torch.einsum("bqrw,bkrw->qk", dz, h[..., t:t + width]) for t in range(kernel_w)]
    return torch.stack(taps, -1).unsqueeze(2).to(hidden.dtype)


def _row_lstm_backward(grad_h, gates, cell, weight, hidden, groups: int, want_gates: bool, want_weight: bool,
                       persistent: bool | None = None):
    """(grad of gates_in [B, 4n, H, W], grad of weight), None where not wanted; the rows' kernels as
    :func:`_row_lstm_forward` chooses them. The weight gradient stays K matmuls after the recurrence in both forms:
    it sums dz_i (x) h_{i-1} over every image, row and column into one [4n, n, K] tensor, which a program per
    image could only add up through B-way atomics (or a [B, 4n, n, K] partial buffer), while one matmul per tap
    reduces over all B (H - 1) W pixels at once."""
    batch, n, height, width = hidden.shape
    grad_z = torch.empty_like(gates)
    dcell = torch.empty((batch, n, width), dtype=cell.dtype, device=cell.device)
    grid, n_w_blocks, (block_w, block_n, _, block_k, persistent_block_k) = plan(batch, n, width, gates.dtype)
    strides = (*gates.stride(), *cell.stride(), weight.stride(0), weight.stride(1), weight.stride(3),
               *grad_h.stride(), *grad_z.stride(), *dcell.stride())
    constexprs = dict(UPCAST=_upcast(gates.dtype), COMPUTE=tl_compute_dtype(gates.dtype),
                      BLOCK_W=block_w, BLOCK_N=block_n)
    if _use_persistent(persistent, batch, height, grid, gates.device):
        _persistent_backward_kernel[(batch,)](
            gates, cell, weight, grad_h, grad_z, dcell, height, width, n, n // groups, weight.shape[3], n_w_blocks,
            grid[1], *strides, BLOCK_K=persistent_block_k, **constexprs)
    else:
        for row in range(height - 1, -1, -1):
            _backward_kernel[grid](
                gates, cell, weight, grad_h, grad_z, dcell, row, height, width, n, n // groups, weight.shape[3],
                n_w_blocks, *strides, BLOCK_K=block_k, **constexprs)
    grad_weight = _weight_grad(grad_z, hidden, weight.shape) if want_weight else None
    return (grad_z if want_gates else None), grad_weight


class RowLSTMRecurrence(torch.autograd.Function):
    """(gates_in, weight, groups, keep_gates, persistent) -> hidden states [B, n, H, W] of the Row LSTM.

    Forward: one fused kernel per row, or one persistent kernel for all rows (``persistent``; None:
    :func:`persistent_rows` decides), running the state-to-state convolution, gates, cell and hidden update; it
    keeps the cell states (compute dtype) and, when ``keep_gates`` (a gradient is needed), the pre-activations.
    Backward: in the same form, rows from the last (the gate gradient, the cell gradient carried up), then the
    weight gradient as K matmuls. Prefer :func:`fastgen.row_lstm`, which validates arguments, picks the backend and
    handles empty tensors.
    """

    @staticmethod
    def forward(ctx, gates_in, weight, groups, keep_gates=True, persistent=None):
        hidden, cell, gates = _row_lstm_forward(gates_in, weight, groups, keep_gates, persistent)
        ctx.groups, ctx.persistent = groups, persistent
        ctx.save_for_backward(gates, cell, weight, hidden)
        return hidden

    @staticmethod
    def backward(ctx, grad_h):
        gates, cell, weight, hidden = ctx.saved_tensors
        if gates is None:
            raise RuntimeError("RowLSTMRecurrence: a call with keep_gates=False has no gradient")
        grad_z, grad_w = _row_lstm_backward(grad_h, gates, cell, weight, hidden, ctx.groups, ctx.needs_input_grad[0],
                                            ctx.needs_input_grad[1], ctx.persistent)
        return grad_z, grad_w, None, None, None


# ---------------------------------------------------------------------------------------------- custom ops
# The same launches as torch.ops.fastgen.* for torch.compile (see fastgen.library). The forward op also returns
# the cell states and the pre-activations (a placeholder when not kept), which its backward op reads.
@library.custom_op("row_lstm", "(Tensor gates_in, Tensor weight, int groups, bool keep_gates, bool? persistent) "
                   "-> (Tensor, Tensor, Tensor)")
def _row_lstm_op(gates_in, weight, groups, keep_gates, persistent):
    """(hidden, cell, gates or a placeholder)."""
    hidden, cell, gates = _row_lstm_forward(gates_in, weight, groups, keep_gates, persistent)
    return hidden, cell, library.nothing(gates_in) if gates is None else gates


@_row_lstm_op.register_fake
def _(gates_in, weight, groups, keep_gates, persistent):
    batch, four_n, height, width = gates_in.shape
    hidden = gates_in.new_empty((batch, four_n // 4, height, width))
    cell = hidden.new_empty(hidden.shape, dtype=compute_dtype(gates_in.dtype))
    gates = gates_in.new_empty(gates_in.shape) if keep_gates else library.nothing(gates_in)
    return hidden, cell, gates


@library.custom_op("row_lstm_backward", "(Tensor grad_h, Tensor gates, Tensor cell, Tensor weight, Tensor hidden, "
                   "int groups, bool grad_gates, bool grad_weight, bool? persistent) -> (Tensor, Tensor)")
def _row_lstm_backward_op(grad_h, gates, cell, weight, hidden, groups, grad_gates, grad_weight, persistent):
    """(grad of gates_in, grad of weight), placeholders where not wanted."""
    grads = _row_lstm_backward(grad_h, gates, cell, weight, hidden, groups, grad_gates, grad_weight, persistent)
    return tuple(library.nothing(hidden) if g is None else g for g in grads)


@_row_lstm_backward_op.register_fake
def _(grad_h, gates, cell, weight, hidden, groups, grad_gates, grad_weight, persistent):
    return (torch.empty_like(gates) if grad_gates else library.nothing(hidden),
            weight.new_empty(weight.shape) if grad_weight else library.nothing(hidden))


def _setup_row_lstm(ctx, inputs, output):
    gates_in, weight, groups, keep_gates, persistent = inputs
    hidden, cell, gates = output
    ctx.groups, ctx.keep_gates, ctx.persistent = groups, keep_gates, persistent
    ctx.save_for_backward(gates, cell, weight, hidden)


def _row_lstm_op_backward(ctx, grad_h, _grad_cell, _grad_gates):
    gates, cell, weight, hidden = ctx.saved_tensors
    if not ctx.keep_gates:
        raise RuntimeError("row_lstm: a call with keep_gates=False has no gradient")
    want_gates, want_weight = ctx.needs_input_grad[:2]
    grad_z, grad_w = torch.ops.fastgen.row_lstm_backward(grad_h, gates, cell, weight, hidden, ctx.groups,
                                                         want_gates, want_weight, ctx.persistent)
    return (grad_z if want_gates else None), (grad_w if want_weight else None), None, None, None


_row_lstm_op.register_autograd(_row_lstm_op_backward, setup_context=_setup_row_lstm)


# ------------------------------------------------------------------------------------------------- public op
def _check_persistent(persistent) -> bool | None:
    if persistent is not None and not isinstance(persistent, bool):
        raise TypeError(f"persistent must be None (the op decides), True or False, got "
                        f"{type(persistent).__name__} {persistent!r}")
    return persistent


def _check_arguments(gates_in, weight, groups) -> int:
    check_float_tensor("gates_in", gates_in)
    if gates_in.dim() != 4:
        raise ValueError(f"gates_in must have shape [B, 4n, H, W], got {tuple(gates_in.shape)}")
    groups = check_int("groups", groups, low=1)
    four_n = gates_in.shape[1]
    if four_n % (4 * groups):
        raise ValueError(f"gates_in has {four_n} channels: each of the groups={groups} groups holds the four gates "
                         f"(o, f, i, g) of its hidden units, so the channels must be a multiple of 4 * groups = "
                         f"{4 * groups}")
    check_float_tensor("weight", weight)
    if weight.device != gates_in.device:
        raise ValueError(f"weight is on {weight.device} but gates_in is on {gates_in.device}")
    if weight.dtype != gates_in.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but gates_in has dtype {gates_in.dtype}")
    n = four_n // 4
    if weight.dim() != 4 or tuple(weight.shape[:3]) != (four_n, n, 1) or weight.shape[3] % 2 == 0:
        raise ValueError(f"weight must have shape [4n, n, 1, k] = [{four_n}, {n}, 1, k] with k odd (the "
                         f"state-to-state 1 x k convolution), got {tuple(weight.shape)}")
    return groups


def _autocast(gates_in, weight):
    """As a convolution under ``torch.autocast``: both operands in the autocast dtype."""
    if not (isinstance(gates_in, torch.Tensor) and isinstance(weight, torch.Tensor)
            and gates_in.is_floating_point() and torch.is_autocast_enabled(gates_in.device.type)):
        return gates_in, weight
    dtype = torch.get_autocast_dtype(gates_in.device.type)
    return gates_in.to(dtype), weight.to(dtype)


def row_lstm(gates_in: torch.Tensor, weight: torch.Tensor, *, groups: int = 1,
             persistent: bool | None = None) -> torch.Tensor:
    """The Row LSTM recurrence of PixelRNN over the rows of an image, on fused kernels.

    Args:
        gates_in: [B, 4n, H, W] input-to-state pre-activations of every row (the output of the 1 x k masked
            convolution, bias included), float16/bfloat16/float32/float64, any strides. The 4n channels form
            ``groups`` groups of 4m (m = n / groups) holding the gates o, f, i, g of their m hidden units (with one
            group: ``o, f, i, g = gates_in.chunk(4, 1)``).
        weight: [4n, n, 1, k], k odd: the state-to-state convolution over the previous row's hidden state (row i,
            column x reads columns x - k//2 .. x + k//2 of row i - 1; zero padded), gates_in's dtype and device.
        groups: channel groups of the gate layout (3 for RGB PixelRNN, 1 otherwise).
        persistent: True: one launch runs every row (a program per image), forward and backward; False: one
            launch per row; None (default): :func:`persistent_rows` decides from the shapes. The results are the
            same either way.

    Returns:
        h [B, n, H, W] in gates_in's dtype, with c_i = sigma(f) c_{i-1} + sigma(i) tanh(g), h_i = sigma(o) tanh(c_i)
        for z_i = gates_in[:, :, i] + conv1d(h_{i-1}, weight) and h_{-1} = c_{-1} = 0
        (:func:`fastgen.reference.row_lstm`). Math runs in float32 (float64 for float64); the cell state is kept in
        that precision, the hidden state in gates_in's dtype. Under ``torch.autocast`` gates_in and the weight are
        cast to the autocast dtype first, as the state-to-state ``F.conv1d`` of the reference would be.
    """
    gates_in, weight = _autocast(gates_in, weight)
    groups = _check_arguments(gates_in, weight, groups)
    persistent = _check_persistent(persistent)
    if backend_for(gates_in) == "reference" or gates_in.numel() == 0:  # empty: torch's result
        return reference.row_lstm(gates_in, weight, groups=groups)
    keep_gates = torch.is_grad_enabled() and (gates_in.requires_grad or weight.requires_grad)
    if library.traced():
        return torch.ops.fastgen.row_lstm(gates_in, weight, groups, keep_gates, persistent)[0]
    return RowLSTMRecurrence.apply(gates_in, weight, groups, keep_gates, persistent)


# ---------------------------------------------------------------------------------------------- diagonal LSTM
def skew(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H, W + H - 1], row i shifted right by i (zeros elsewhere), in one pad and a view:
    padded to width W + H, the flat map read with row stride W + H - 1 puts x[i, j] at column i + j."""
    batch, channels, height, width = x.shape
    flat = torch.nn.functional.pad(x, (0, height)).flatten(2)
    return flat[:, :, :height * (width + height - 1)].view(batch, channels, height, width + height - 1)


def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """The inverse of :func:`skew`: [B, C, H, W + H - 1] -> [B, C, H, W] (one copy, a pad and a view)."""
    batch, channels, height, skewed = x.shape
    flat = torch.nn.functional.pad(x.reshape(batch, channels, height * skewed), (0, height))
    return flat.view(batch, channels, height, skewed + 1)[:, :, :, :width]


def _check_diagonal_weight(weight, gates_in) -> None:
    check_float_tensor("weight", weight)
    four_n = gates_in.shape[1]
    if weight.dim() != 4 or tuple(weight.shape) != (four_n, four_n // 4, 2, 1):
        raise ValueError(f"weight must have shape [4n, n, 2, 1] = [{four_n}, {four_n // 4}, 2, 1] (the 2 x 1 "
                         f"state-to-state convolution down a skewed column), got {tuple(weight.shape)}")


def diagonal_lstm(gates_in: torch.Tensor, weight: torch.Tensor, *, groups: int = 1,
                  persistent: bool | None = None) -> torch.Tensor:
    """The left-to-right Diagonal LSTM of PixelRNN (:func:`fastgen.reference.diagonal_lstm`) on the Row LSTM's
    fused kernels.

    Skewed, the diagonals of the image are the columns of a [H, W + H - 1] map and the state-to-state part is a
    2 x 1 convolution down each column: row i of a column reads rows i - 1 and i of the previous one. Transposed,
    that is the Row LSTM's recurrence with the columns as rows and a centred 1 x 3 state-to-state kernel whose
    third tap is zero, so :func:`row_lstm` runs it, in either of its launch forms (one launch per skewed column,
    or one for all columns) forward and backward (the zero tap's gradient is computed and dropped: a third more
    state-to-state FLOPs than needed).

    Args:
        gates_in: [B, 4n, H, W] input-to-state pre-activations (bias included), the gate layout of
            :func:`row_lstm`.
        weight: [4n, n, 2, 1]: tap 0 reads the row above in the skewed column (the pixel above in the image),
            tap 1 the same row (the pixel to the left).
        groups: channel groups of the gate layout (3 for RGB).
        persistent: the launch form, as :func:`row_lstm` takes it.

    Returns:
        h [B, n, H, W] in gates_in's dtype.
    """
    check_float_tensor("gates_in", gates_in)
    if gates_in.dim() != 4:
        raise ValueError(f"gates_in must have shape [B, 4n, H, W], got {tuple(gates_in.shape)}")
    _check_diagonal_weight(weight, gates_in)
    persistent = _check_persistent(persistent)
    if backend_for(gates_in) == "reference" or gates_in.numel() == 0:
        return reference.diagonal_lstm(gates_in, weight, groups=groups)
    width = gates_in.shape[3]
    # [4n, n, 2, 1] -> the centred [4n, n, 1, 3] kernel [W_above, W_left, 0] of the transposed recurrence
    row_weight = torch.nn.functional.pad(weight[:, :, :, 0], (0, 1)).unsqueeze(2)
    # [B, n, W + H - 1, H]
    h = row_lstm(skew(gates_in).transpose(2, 3), row_weight, groups=groups, persistent=persistent)
    return unskew(h.transpose(2, 3), width)


def diagonal_bilstm(gates_left: torch.Tensor, gates_right: torch.Tensor, weight_left: torch.Tensor,
                    weight_right: torch.Tensor, *, groups: int = 1, persistent: bool | None = None) -> torch.Tensor:
    """Both directions of the Diagonal BiLSTM, summed (:func:`fastgen.reference.diagonal_bilstm`): the
    right-to-left LSTM on the mirrored map, its output shifted down one row. Each direction is
    :func:`diagonal_lstm` (``persistent``: the launch form, as :func:`row_lstm` takes it). Returns [B, n, H, W]."""
    left = diagonal_lstm(gates_left, weight_left, groups=groups, persistent=persistent)
    right = diagonal_lstm(gates_right.flip(3), weight_right, groups=groups, persistent=persistent).flip(3)
    return left + torch.nn.functional.pad(right, (0, 0, 1, 0))[:, :, :-1]


def kernel_launches():
    """Every kernel configuration the op can launch, for the sm_90/sm_80 compile check."""
    from fastgen.compile_check import KernelLaunch

    # gates_in and grad_h come in NCHW ("nchw": their column strides are 1) or channels-last ("nhwc": their
    # channel strides are 1); the buffers the op allocates (hidden, cell, gates, their gradients) are NCHW
    # contiguous, the weight a contiguous [4n, n, 1, k] parameter.
    own = dict(forward=("stride_hw", "stride_cw", "stride_zw", "stride_wk"),
               backward=("stride_zw", "stride_cw", "stride_wk", "stride_dw", "stride_ew"))
    given = {"nchw": dict(forward=("stride_iw",), backward=("stride_gw",)),
             "nhwc": dict(forward=("stride_ic",), backward=("stride_gc",))}
    for dtype in FLOAT_DTYPES:
        acc = compute_dtype(dtype)
        tensor_cores = dtype.itemsize == 2
        columns, units = COLUMN_BLOCKS[dtype], UNIT_BLOCKS[dtype]
        for block_w, block_n, layout in itertools.product(columns, units, given):
            # forward: BLOCK_K from BLOCK_N (forward_block_k); backward: 16 for 32/64-bit tiles, else from 4n
            # (16 only when n <= 4, so BLOCK_N is then 16)
            backward_ks = (16,) if dtype.itemsize > 2 else columns if block_n == units[0] else columns[-1:]
            # each direction in both launch forms (one row per launch, all rows in one), the same tiles
            for kernel, direction, block_ks in (
                    (kernels.row_lstm_forward_kernel, "forward", (forward_block_k(block_n, dtype),)),
                    (kernels.row_lstm_persistent_forward_kernel, "forward", (forward_block_k(block_n, dtype),)),
                    (kernels.row_lstm_backward_kernel, "backward", backward_ks),
                    (kernels.row_lstm_persistent_backward_kernel, "backward",
                     sorted({persistent_backward_block_k(block_w, block_n, k) for k in backward_ks}))):
                for block_k, config in itertools.product(block_ks, configs_for(kernel)):
                    constexprs = dict(UPCAST=False, COMPUTE=tl_compute_dtype(dtype), BLOCK_W=block_w,
                                      BLOCK_N=block_n, BLOCK_K=block_k)
                    yield KernelLaunch.build(kernel, dtype, {"CELL": acc, "DCELL": acc}, constexprs=constexprs,
                                             num_warps=config.num_warps, num_stages=config.num_stages,
                                             tensor_cores=tensor_cores, variant=layout,
                                             ones=own[direction] + given[layout][direction])
