"""The masks and tap sets of the PixelCNN convolutions, for inspection.

>>> from fastgen.nn import masks
>>> print(masks.masked(5, "A").diagram())
xxxxx
xxxxx
xxo..
.....
.....
>>> masks.masked(3, "B", data_channels=3).mask(6, 6)[:, :, 1, 1]   # the centre tap's channel groups
"""

from fastgen.taps import (CHANNEL_GROUPS, DATA_CHANNELS, MASK_TYPES, TapSet, down_right_shifted, down_shifted, horizontal_stack,
                          masked, vertical_stack)

__all__ = ["CHANNEL_GROUPS", "DATA_CHANNELS", "MASK_TYPES", "TapSet", "down_right_shifted", "down_shifted", "horizontal_stack",
           "masked", "vertical_stack"]
