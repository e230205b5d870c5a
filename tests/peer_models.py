"""Masked convolutions written the way the public PixelCNN implementations write them (the tests' peers)."""

from torch import nn


class InPlaceMaskedConv2d(nn.Conv2d):
    """The usual pattern (e.g. jzbontar/pixelcnn-pytorch): nn.Conv2d + a mask buffer, the weight masked in place
    before the convolution."""

    def __init__(self, mask_type, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", self.weight.data.clone())
        _, _, kh, kw = self.weight.size()
        self.mask.fill_(1)
        self.mask[:, :, kh // 2, kw // 2 + (mask_type == "B"):] = 0
        self.mask[:, :, kh // 2 + 1:] = 0

    def forward(self, x):
        self.weight.data *= self.mask
        return super().forward(x)
