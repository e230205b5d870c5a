"""The Row LSTM recurrence of PixelRNN: the state-to-state convolution, the gate nonlinearities and the cell/hidden
update fused (forward), and backpropagation through the rows (backward), one row per launch or all rows in one
persistent launch.

Shapes: gate pre-activations [B, 4n, H, W] (GATES_IN, the input-to-state part computed for all rows by a masked
convolution; GATES, the full pre-activations the forward keeps for the backward), hidden and cell states
[B, n, H, W], the state-to-state weight [4n, n, 1, K] (K odd; column x of row i reads columns x - K//2 .. x + K//2
of row i - 1). The 4n gate channels form groups of 4m (m = n / G): gate q (o, f, i, g) of hidden unit
c = g * m + j is channel c + 3 g m + q m. Every tensor is addressed through its own strides.

Forward of row i on a [BLOCK_W columns, BLOCK_N hidden units] tile (``_forward_tile``):

    z_q[w, c] = GATES_IN[q(c), w] + sum_t sum_k h_{i-1}[k, w + t - K//2] * WEIGHT[q(c), k, t]    (4 GEMMs)
    c_i = sigma(z_f) c_{i-1} + sigma(z_i) tanh(z_g),   h_i = sigma(z_o) tanh(c_i)

It reads row i - 1 of HIDDEN and CELL and writes row i of HIDDEN, CELL and (when ``write_gates``) GATES. Backward
of row i (``_backward_tile``, rows from the last to the first):

    dh = GRAD_H[i] + sum_t sum_q dz_{i+1}[q, w - t + K//2] * WEIGHT[q, c, t]                     (one GEMM)
    dc = dh sigma(z_o) tanh'(c_i) + DCELL,   dz_o, dz_f, dz_i, dz_g as the chain rule says
    DCELL <- dc sigma(z_f)   (carried to row i - 1, read and written by the tile that owns those elements)

Two launch forms run these tiles:

* per row (``row_lstm_forward_kernel``, ``row_lstm_backward_kernel``): a program per tile of one row, one launch
  per row; the launch boundary orders the rows.
* persistent (``row_lstm_persistent_forward_kernel``, ``row_lstm_persistent_backward_kernel``): a program per
  image, looping over the rows and, within a row, over its tiles; one launch for all rows. Every tile of row i
  reads all n hidden units of row i - 1 (the state-to-state weight is dense over them: the channel groups do not
  make anything independent) and its neighbour columns, so one program owns whole rows of its image and nothing
  synchronises programs. ``tl.debug_barrier()`` (a CTA barrier, which makes the CTA's global writes visible to
  its own threads) ends every row, before the next row reads it.

The weight gradient, sum over rows and pixels of dz_i (x) h_{i-1}, is K matmuls that the launcher runs once.
Arithmetic and accumulation run in COMPUTE (float32, float64 for float64); the GEMM operands are the stored
dtype (16-bit tiles on tensor cores), upcast to float32 when UPCAST (bfloat16 under Triton's interpreter, whose
bf16 tl.dot is wrong); float32 GEMMs use IEEE float32 (no TF32), as the other fastgen GEMMs.
"""

import triton
import triton.language as tl

from .numerics import sigmoids, tanh_and_slope

# the window width, the row and the height are arguments, not specialized: one compiled kernel serves every K, H
_RUNTIME_ARGS = ["kernel_w", "row"]
_PERSISTENT_RUNTIME_ARGS = ["kernel_w", "height"]


@triton.jit
def _mma(a, b, acc, UPCAST: tl.constexpr):
    """acc += a @ b (float32 operands when UPCAST)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)


@triton.jit
def _units(unit_block, m, BLOCK_N: tl.constexpr):
    """(hidden units [BLOCK_N] of hidden-unit block ``unit_block``, their gate-o channels [BLOCK_N])."""
    units = unit_block * BLOCK_N + tl.arange(0, BLOCK_N)
    return units, units + (units // m) * (3 * m)  # gate o of unit c: c + 3 g m


@triton.jit
def _forward_tile(
    GATES_IN, WEIGHT, HIDDEN, CELL, GATES,  # as in row_lstm_forward_kernel
    b,  # the image (int64)
    column_block,  # the tile's columns: column_block * BLOCK_W + [0, BLOCK_W)
    unit_block,  # the tile's hidden units: unit_block * BLOCK_N + [0, BLOCK_N)
    row, width, n_hidden, m, kernel_w, write_gates,
    stride_ib, stride_ic, stride_ih, stride_iw,
    stride_wo, stride_wi, stride_wk,
    stride_hb, stride_hc, stride_hh, stride_hw,
    stride_cb, stride_cc, stride_ch, stride_cw,
    stride_zb, stride_zc, stride_zh, stride_zw,
    UPCAST: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Row ``row`` of h and c on one [BLOCK_W, BLOCK_N] tile of image ``b`` (see the module doc)."""
    cols = column_block * BLOCK_W + tl.arange(0, BLOCK_W)
    units, gate_o = _units(unit_block, m, BLOCK_N)
    row64 = tl.cast(row, tl.int64)  # a launch argument, or a loop counter (an int when interpreted)
    col_ok = cols < width
    unit_ok = units < n_hidden
    mask = col_ok[:, None] & unit_ok[None, :]
    acc_o = tl.zeros((BLOCK_W, BLOCK_N), dtype=COMPUTE)
    acc_f = tl.zeros((BLOCK_W, BLOCK_N), dtype=COMPUTE)
    acc_i = tl.zeros((BLOCK_W, BLOCK_N), dtype=COMPUTE)
    acc_g = tl.zeros((BLOCK_W, BLOCK_N), dtype=COMPUTE)
    c_prev = tl.zeros((BLOCK_W, BLOCK_N), dtype=COMPUTE)
    if row > 0:
        h_row = HIDDEN + b * stride_hb + (row64 - 1) * stride_hh
        for t in range(0, kernel_w):
            src = cols + t - kernel_w // 2
            src_ok = (src >= 0) & (src < width)
            for k0 in range(0, n_hidden, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < n_hidden
                h_prev = tl.load(h_row + ks[None, :] * stride_hc + src[:, None] * stride_hw,
                                 mask=src_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_W, BLOCK_K]
                w = WEIGHT + ks[:, None] * stride_wi + t * stride_wk
                w_mask = k_ok[:, None] & unit_ok[None, :]
                acc_o = _mma(h_prev, tl.load(w + gate_o[None, :] * stride_wo, mask=w_mask, other=0.0), acc_o,
                             UPCAST)
                acc_f = _mma(h_prev, tl.load(w + (gate_o + m)[None, :] * stride_wo, mask=w_mask, other=0.0), acc_f,
                             UPCAST)
                acc_i = _mma(h_prev, tl.load(w + (gate_o + 2 * m)[None, :] * stride_wo, mask=w_mask, other=0.0),
                             acc_i, UPCAST)
                acc_g = _mma(h_prev, tl.load(w + (gate_o + 3 * m)[None, :] * stride_wo, mask=w_mask, other=0.0),
                             acc_g, UPCAST)
        c_prev = tl.load(CELL + b * stride_cb + (row64 - 1) * stride_ch + units[None, :] * stride_cc
                         + cols[:, None] * stride_cw, mask=mask, other=0.0).to(COMPUTE)
    g_in = GATES_IN + b * stride_ib + row64 * stride_ih + cols[:, None] * stride_iw
    z_o = acc_o + tl.load(g_in + gate_o[None, :] * stride_ic, mask=mask, other=0.0).to(COMPUTE)
    z_f = acc_f + tl.load(g_in + (gate_o + m)[None, :] * stride_ic, mask=mask, other=0.0).to(COMPUTE)
    z_i = acc_i + tl.load(g_in + (gate_o + 2 * m)[None, :] * stride_ic, mask=mask, other=0.0).to(COMPUTE)
    z_g = acc_g + tl.load(g_in + (gate_o + 3 * m)[None, :] * stride_ic, mask=mask, other=0.0).to(COMPUTE)
    if write_gates:
        z = GATES + b * stride_zb + row64 * stride_zh + cols[:, None] * stride_zw
        tl.store(z + gate_o[None, :] * stride_zc, z_o.to(GATES.dtype.element_ty), mask=mask)
        tl.store(z + (gate_o + m)[None, :] * stride_zc, z_f.to(GATES.dtype.element_ty), mask=mask)
        tl.store(z + (gate_o + 2 * m)[None, :] * stride_zc, z_i.to(GATES.dtype.element_ty), mask=mask)
        tl.store(z + (gate_o + 3 * m)[None, :] * stride_zc, z_g.to(GATES.dtype.element_ty), mask=mask)
    sig_o, _, _ = sigmoids(z_o)
    sig_f, _, _ = sigmoids(z_f)
    sig_i, _, _ = sigmoids(z_i)
    tanh_g, _ = tanh_and_slope(z_g)
    c = sig_f * c_prev + sig_i * tanh_g
    tanh_c, _ = tanh_and_slope(c)
    tl.store(CELL + b * stride_cb + row64 * stride_ch + units[None, :] * stride_cc
             + cols[:, None] * stride_cw, c.to(CELL.dtype.element_ty), mask=mask)
    tl.store(HIDDEN + b * stride_hb + row64 * stride_hh + units[None, :] * stride_hc
             + cols[:, None] * stride_hw, (sig_o * tanh_c).to(HIDDEN.dtype.element_ty), mask=mask)


@triton.jit
def _backward_tile(
    GATES, CELL, WEIGHT, GRAD_H, GRAD_Z, DCELL,  # as in row_lstm_backward_kernel
    b,  # the image (int64)
    column_block,  # the tile's columns: column_block * BLOCK_W + [0, BLOCK_W)
    unit_block,  # the tile's hidden units: unit_block * BLOCK_N + [0, BLOCK_N)
    row, height, width, n_hidden, m, kernel_w,
    stride_zb, stride_zc, stride_zh, stride_zw,
    stride_cb, stride_cc, stride_ch, stride_cw,
    stride_wo, stride_wi, stride_wk,
    stride_gb, stride_gc, stride_gh, stride_gw,
    stride_db, stride_dc, stride_dh, stride_dw,
    stride_eb, stride_ec, stride_ew,
    UPCAST: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Row ``row`` of the gate gradient, and the cell gradient carried to the row above, on one tile of image
    ``b`` (see the module doc)."""
    cols = column_block * BLOCK_W + tl.arange(0, BLOCK_W)
    units, gate_o = _units(unit_block, m, BLOCK_N)
    row64 = tl.cast(row, tl.int64)  # a launch argument, or a loop counter (an int when interpreted)
    col_ok = cols < width
    unit_ok = units < n_hidden
    mask = col_ok[:, None] & unit_ok[None, :]
    dh = tl.load(GRAD_H + b * stride_gb + row64 * stride_gh + units[None, :] * stride_gc
                 + cols[:, None] * stride_gw, mask=mask, other=0.0).to(COMPUTE)
    dcell = DCELL + b * stride_eb + units[None, :] * stride_ec + cols[:, None] * stride_ew
    dc_next = tl.zeros((BLOCK_W, BLOCK_N), dtype=COMPUTE)
    if row + 1 < height:
        n_gates = 4 * n_hidden
        dz_row = GRAD_Z + b * stride_db + (row64 + 1) * stride_dh
        for t in range(0, kernel_w):
            src = cols - t + kernel_w // 2
            src_ok = (src >= 0) & (src < width)
            for q0 in range(0, n_gates, BLOCK_K):
                qs = q0 + tl.arange(0, BLOCK_K)
                q_ok = qs < n_gates
                dz_next = tl.load(dz_row + qs[None, :] * stride_dc + src[:, None] * stride_dw,
                                  mask=src_ok[:, None] & q_ok[None, :], other=0.0)  # [BLOCK_W, BLOCK_K]
                w = tl.load(WEIGHT + qs[:, None] * stride_wo + units[None, :] * stride_wi + t * stride_wk,
                            mask=q_ok[:, None] & unit_ok[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
                dh = _mma(dz_next, w, dh, UPCAST)
        dc_next = tl.load(dcell, mask=mask, other=0.0).to(COMPUTE)
    z = GATES + b * stride_zb + row64 * stride_zh + cols[:, None] * stride_zw
    z_o = tl.load(z + gate_o[None, :] * stride_zc, mask=mask, other=0.0).to(COMPUTE)
    z_f = tl.load(z + (gate_o + m)[None, :] * stride_zc, mask=mask, other=0.0).to(COMPUTE)
    z_i = tl.load(z + (gate_o + 2 * m)[None, :] * stride_zc, mask=mask, other=0.0).to(COMPUTE)
    z_g = tl.load(z + (gate_o + 3 * m)[None, :] * stride_zc, mask=mask, other=0.0).to(COMPUTE)
    cell = CELL + b * stride_cb + units[None, :] * stride_cc + cols[:, None] * stride_cw
    c = tl.load(cell + row64 * stride_ch, mask=mask, other=0.0).to(COMPUTE)
    c_prev = tl.zeros((BLOCK_W, BLOCK_N), dtype=COMPUTE)
    if row > 0:
        c_prev = tl.load(cell + (row64 - 1) * stride_ch, mask=mask, other=0.0).to(COMPUTE)
    sig_o, sig_neg_o, _ = sigmoids(z_o)
    sig_f, sig_neg_f, _ = sigmoids(z_f)
    sig_i, sig_neg_i, _ = sigmoids(z_i)
    tanh_g, slope_g = tanh_and_slope(z_g)
    tanh_c, slope_c = tanh_and_slope(c)
    dc = dh * sig_o * slope_c + dc_next
    dz = GRAD_Z + b * stride_db + row64 * stride_dh + cols[:, None] * stride_dw
    out = GRAD_Z.dtype.element_ty
    tl.store(dz + gate_o[None, :] * stride_dc, (dh * tanh_c * sig_o * sig_neg_o).to(out), mask=mask)
    tl.store(dz + (gate_o + m)[None, :] * stride_dc, (dc * c_prev * sig_f * sig_neg_f).to(out), mask=mask)
    tl.store(dz + (gate_o + 2 * m)[None, :] * stride_dc, (dc * tanh_g * sig_i * sig_neg_i).to(out), mask=mask)
    tl.store(dz + (gate_o + 3 * m)[None, :] * stride_dc, (dc * sig_i * slope_g).to(out), mask=mask)
    tl.store(dcell, (dc * sig_f).to(DCELL.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------- one row per launch
@triton.jit(do_not_specialize=_RUNTIME_ARGS)
def row_lstm_forward_kernel(
    GATES_IN,  # [B, 4n, H, W] input-to-state pre-activations (any strides)
    WEIGHT,  # [4n, n, 1, K] state-to-state weight (any strides)
    HIDDEN,  # [B, n, H, W] output h: row - 1 read, row written
    CELL,  # [B, n, H, W] output c (COMPUTE dtype): row - 1 read, row written
    GATES,  # [B, 4n, H, W] output z = full pre-activations (written only if write_gates)
    row,  # the row this launch computes
    width,  # W
    n_hidden,  # n
    m,  # hidden units per channel group (n / G)
    kernel_w,  # K, the state-to-state window width (odd)
    n_w_blocks,  # cdiv(W, BLOCK_W)
    write_gates,  # 1: store z to GATES (for the backward)
    stride_ib, stride_ic, stride_ih, stride_iw,  # strides of GATES_IN
    stride_wo, stride_wi, stride_wk,  # strides of WEIGHT over gate channels, hidden units and taps
    stride_hb, stride_hc, stride_hh, stride_hw,  # strides of HIDDEN
    stride_cb, stride_cc, stride_ch, stride_cw,  # strides of CELL
    stride_zb, stride_zc, stride_zh, stride_zw,  # strides of GATES
    UPCAST: tl.constexpr,  # multiply in float32 (bfloat16 under the interpreter)
    COMPUTE: tl.constexpr,  # arithmetic and accumulator dtype
    BLOCK_W: tl.constexpr,  # columns per program
    BLOCK_N: tl.constexpr,  # hidden units per program (4 gate accumulators of [BLOCK_W, BLOCK_N])
    BLOCK_K: tl.constexpr,  # hidden units of row - 1 reduced per step
):
    """Row ``row`` of h and c, a program per (image and column block, hidden-unit block) tile."""
    program = tl.program_id(0)
    b = program // n_w_blocks
    _forward_tile(GATES_IN, WEIGHT, HIDDEN, CELL, GATES, b.to(tl.int64), program - b * n_w_blocks,
                  tl.program_id(1), row, width, n_hidden, m, kernel_w, write_gates,
                  stride_ib, stride_ic, stride_ih, stride_iw, stride_wo, stride_wi, stride_wk,
                  stride_hb, stride_hc, stride_hh, stride_hw, stride_cb, stride_cc, stride_ch, stride_cw,
                  stride_zb, stride_zc, stride_zh, stride_zw, UPCAST, COMPUTE, BLOCK_W, BLOCK_N, BLOCK_K)


@triton.jit(do_not_specialize=_RUNTIME_ARGS)
def row_lstm_backward_kernel(
    GATES,  # [B, 4n, H, W] pre-activations z of the forward
    CELL,  # [B, n, H, W] cell states of the forward (COMPUTE dtype)
    WEIGHT,  # [4n, n, 1, K] state-to-state weight
    GRAD_H,  # [B, n, H, W] gradient of the loss w.r.t. the hidden states (any strides, 0 included)
    GRAD_Z,  # [B, 4n, H, W] output: gradient w.r.t. z (= w.r.t. GATES_IN); row + 1 read, row written
    DCELL,  # [B, n, W] (COMPUTE dtype) dc carried from row + 1 (read when row + 1 < H), overwritten for row - 1
    row,  # the row this launch computes (from H - 1 down to 0)
    height,  # H
    width,  # W
    n_hidden,  # n
    m,  # hidden units per channel group
    kernel_w,  # K
    n_w_blocks,  # cdiv(W, BLOCK_W)
    stride_zb, stride_zc, stride_zh, stride_zw,  # strides of GATES
    stride_cb, stride_cc, stride_ch, stride_cw,  # strides of CELL
    stride_wo, stride_wi, stride_wk,  # strides of WEIGHT
    stride_gb, stride_gc, stride_gh, stride_gw,  # strides of GRAD_H
    stride_db, stride_dc, stride_dh, stride_dw,  # strides of GRAD_Z
    stride_eb, stride_ec, stride_ew,  # strides of DCELL
    UPCAST: tl.constexpr,  # multiply in float32 (bfloat16 under the interpreter)
    COMPUTE: tl.constexpr,  # arithmetic and accumulator dtype
    BLOCK_W: tl.constexpr,  # columns per program
    BLOCK_N: tl.constexpr,  # hidden units per program
    BLOCK_K: tl.constexpr,  # gate channels of row + 1 reduced per step
):
    """Row ``row`` of the gate gradient and the carried cell gradient, a program per tile."""
    program = tl.program_id(0)
    b = program // n_w_blocks
    _backward_tile(GATES, CELL, WEIGHT, GRAD_H, GRAD_Z, DCELL, b.to(tl.int64), program - b * n_w_blocks,
                   tl.program_id(1), row, height, width, n_hidden, m, kernel_w,
                   stride_zb, stride_zc, stride_zh, stride_zw, stride_cb, stride_cc, stride_ch, stride_cw,
                   stride_wo, stride_wi, stride_wk, stride_gb, stride_gc, stride_gh, stride_gw,
                   stride_db, stride_dc, stride_dh, stride_dw, stride_eb, stride_ec, stride_ew,
                   UPCAST, COMPUTE, BLOCK_W, BLOCK_N, BLOCK_K)


# ------------------------------------------------------------------------------------ all rows in one launch
@triton.jit(do_not_specialize=_PERSISTENT_RUNTIME_ARGS)
def row_lstm_persistent_forward_kernel(
    GATES_IN,  # [B, 4n, H, W] input-to-state pre-activations (any strides)
    WEIGHT,  # [4n, n, 1, K] state-to-state weight (any strides)
    HIDDEN,  # [B, n, H, W] output h
    CELL,  # [B, n, H, W] output c (COMPUTE dtype)
    GATES,  # [B, 4n, H, W] output z = full pre-activations (written only if write_gates)
    height,  # H
    width,  # W
    n_hidden,  # n
    m,  # hidden units per channel group (n / G)
    kernel_w,  # K, the state-to-state window width (odd)
    n_w_blocks,  # cdiv(W, BLOCK_W)
    n_unit_blocks,  # cdiv(n, BLOCK_N)
    write_gates,  # 1: store z to GATES (for the backward)
    stride_ib, stride_ic, stride_ih, stride_iw,  # strides of GATES_IN
    stride_wo, stride_wi, stride_wk,  # strides of WEIGHT over gate channels, hidden units and taps
    stride_hb, stride_hc, stride_hh, stride_hw,  # strides of HIDDEN
    stride_cb, stride_cc, stride_ch, stride_cw,  # strides of CELL
    stride_zb, stride_zc, stride_zh, stride_zw,  # strides of GATES
    UPCAST: tl.constexpr,  # multiply in float32 (bfloat16 under the interpreter)
    COMPUTE: tl.constexpr,  # arithmetic and accumulator dtype
    BLOCK_W: tl.constexpr,  # columns per tile
    BLOCK_N: tl.constexpr,  # hidden units per tile (4 gate accumulators of [BLOCK_W, BLOCK_N])
    BLOCK_K: tl.constexpr,  # hidden units of row - 1 reduced per step
):
    """Every row of h and c of image ``program_id(0)``: rows in order, the tiles of a row one after another, a
    CTA barrier between rows."""
    b = tl.program_id(0).to(tl.int64)
    n_tiles = n_w_blocks * n_unit_blocks
    for row in range(0, height):
        for tile in range(0, n_tiles):
            column_block = tile // n_unit_blocks
            _forward_tile(GATES_IN, WEIGHT, HIDDEN, CELL, GATES, b, column_block, tile - column_block * n_unit_blocks,
                          row, width, n_hidden, m, kernel_w, write_gates,
                          stride_ib, stride_ic, stride_ih, stride_iw, stride_wo, stride_wi, stride_wk,
                          stride_hb, stride_hc, stride_hh, stride_hw, stride_cb, stride_cc, stride_ch, stride_cw,
                          stride_zb, stride_zc, stride_zh, stride_zw, UPCAST, COMPUTE, BLOCK_W, BLOCK_N, BLOCK_K)
        tl.debug_barrier()  # row `row` of HIDDEN and CELL written by every thread before the next row reads it


@triton.jit(do_not_specialize=_PERSISTENT_RUNTIME_ARGS)
def row_lstm_persistent_backward_kernel(
    GATES,  # [B, 4n, H, W] pre-activations z of the forward
    CELL,  # [B, n, H, W] cell states of the forward (COMPUTE dtype)
    WEIGHT,  # [4n, n, 1, K] state-to-state weight
    GRAD_H,  # [B, n, H, W] gradient of the loss w.r.t. the hidden states (any strides, 0 included)
    GRAD_Z,  # [B, 4n, H, W] output: gradient w.r.t. z (= w.r.t. GATES_IN)
    DCELL,  # [B, n, W] (COMPUTE dtype) scratch: dc carried from one row to the row above
    height,  # H
    width,  # W
    n_hidden,  # n
    m,  # hidden units per channel group
    kernel_w,  # K
    n_w_blocks,  # cdiv(W, BLOCK_W)
    n_unit_blocks,  # cdiv(n, BLOCK_N)
    stride_zb, stride_zc, stride_zh, stride_zw,  # strides of GATES
    stride_cb, stride_cc, stride_ch, stride_cw,  # strides of CELL
    stride_wo, stride_wi, stride_wk,  # strides of WEIGHT
    stride_gb, stride_gc, stride_gh, stride_gw,  # strides of GRAD_H
    stride_db, stride_dc, stride_dh, stride_dw,  # strides of GRAD_Z
    stride_eb, stride_ec, stride_ew,  # strides of DCELL
    UPCAST: tl.constexpr,  # multiply in float32 (bfloat16 under the interpreter)
    COMPUTE: tl.constexpr,  # arithmetic and accumulator dtype
    BLOCK_W: tl.constexpr,  # columns per tile
    BLOCK_N: tl.constexpr,  # hidden units per tile
    BLOCK_K: tl.constexpr,  # gate channels of row + 1 reduced per step
):
    """The gate gradient of every row of image ``program_id(0)``: rows from the last, the tiles of a row one
    after another, a CTA barrier between rows."""
    b = tl.program_id(0).to(tl.int64)
    n_tiles = n_w_blocks * n_unit_blocks
    for rows_done in range(0, height):
        row = height - 1 - rows_done
        for tile in range(0, n_tiles):
            column_block = tile // n_unit_blocks
            _backward_tile(GATES, CELL, WEIGHT, GRAD_H, GRAD_Z, DCELL, b, column_block,
                           tile - column_block * n_unit_blocks, row, height, width, n_hidden, m, kernel_w,
                           stride_zb, stride_zc, stride_zh, stride_zw, stride_cb, stride_cc, stride_ch, stride_cw,
                           stride_wo, stride_wi, stride_wk, stride_gb, stride_gc, stride_gh, stride_gw,
                           stride_db, stride_dc, stride_dh, stride_dw, stride_eb, stride_ec, stride_ew,
                           UPCAST, COMPUTE, BLOCK_W, BLOCK_N, BLOCK_K)
        tl.debug_barrier()  # row `row` of GRAD_Z and DCELL written by every thread before the row above reads them
