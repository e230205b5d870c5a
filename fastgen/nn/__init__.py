"""Modules on fastgen's kernels, subclassing their torch twins (parameters and state_dict are torch's)."""

from fastgen.nn import masks
from fastgen.nn.tap_conv import (DownRightShiftedConv2d, DownShiftedConv2d, HorizontalStackConv2d, MaskedConv2d,
                                 TapConv2d, VerticalStackConv2d)
from fastgen.nn.shifted_resample import (DownRightShiftedConvTranspose2d, DownShiftedConvTranspose2d,
                                         StridedDownRightShiftedConv2d, StridedDownShiftedConv2d)
from fastgen.nn.row_lstm import RowLSTM
from fastgen.nn.diagonal_lstm import DiagonalBiLSTM
from fastgen.nn.convert import ConversionReport, convert  # noqa: E402  (after the modules it converts to)

__all__ = ["ConversionReport", "DiagonalBiLSTM", "DownRightShiftedConv2d", "DownRightShiftedConvTranspose2d",
           "DownShiftedConv2d", "DownShiftedConvTranspose2d", "HorizontalStackConv2d", "MaskedConv2d", "RowLSTM",
           "StridedDownRightShiftedConv2d", "StridedDownShiftedConv2d", "TapConv2d", "VerticalStackConv2d", "convert",
           "masks"]
