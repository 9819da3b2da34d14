"""The noise-prediction network: a class-conditional U-Net for 28x28 images (or any size the
levels can halve, 32x32 or 64x64, grey or RGB: see ``image_size`` and ``in_channels``).

The layout follows DDPM (Ho et al. 2020, App. B) scaled down for MNIST:

    [patchify]                      with patch_size p > 1: each p x p block of pixels becomes
                                    p^2 channels (pixel unshuffle)         28x28 -> 14x14 (p = 2)
    stem conv                       in_channels * p^2 -> channels[0]       28x28 (p = 1)
    encoder level i                 num_res_blocks ResBlocks at channels[i], then a
                                    stride-2 conv (except at the last level)  28 -> 14 -> 7
    middle                          ResBlock, [self-attention], ResBlock at channels[-1]
    decoder level i (reversed)      concat the encoder skip of level i, num_res_blocks
                                    ResBlocks back to channels[i], then nearest x2 + conv
    head                            GroupNorm, SiLU, conv                  channels[0] -> in_channels * p^2
    [unpatchify]                    pixel shuffle back to in_channels at full resolution

Patches (p = 2, as the 2x2 patches of DiT, Peebles & Xie 2023, or the space-to-depth input of
simple diffusion, Hoogeboom et al. 2023) make every level 4x cheaper: on a CPU, where the 28x28
level of thin feature maps costs most of the time, a patch-2 U-Net of the same parameter count
trains about twice as many images per second.

Conditioning: a sinusoidal embedding of the timestep (Vaswani et al. 2017, Sec. 3.5) goes
through a two-layer MLP; a learned label embedding (row ``num_classes`` is the null label used
for unconditional passes, see classifier-free guidance, Ho & Salimans 2022) is added to it.
Every ResBlock turns that sum into a per-channel scale and shift of its second GroupNorm
("scale-shift norm", Dhariwal & Nichol 2021, Sec. 3).

Initialisation: PyTorch defaults everywhere. The head conv is deliberately *not* zero-initialised:
with a zero head the gradient of every earlier parameter (the label embedding included) is exactly
zero at the first step, which hides wiring bugs from tests and buys little at this scale.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The parameter count in closed form, without building anything. It is defined in config.py
# (torch-free, so that config validation refuses a huge model before any tensor exists) and
# mirrors ConditionalUNet below layer by layer; tests/test_unet.py checks it against
# count_parameters(build_model(cfg)). Change both together.
from .config import check_model_size, estimate_parameters  # noqa: F401  (re-exported)

IMAGE_SIZE = 28  # MNIST and Fashion-MNIST are 28x28; other datasets set data.image_size


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters in ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


class SinusoidalEmbedding(nn.Module):
    """Timestep -> (sin, cos) features at geometrically spaced frequencies.

    Vaswani et al. 2017, Sec. 3.5: PE(t, i) = sin(t / 10000^(i/half)) for i < half, and the
    matching cosines in the second half, as in the DDPM code.
    """

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)  # (dim/2,)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None, :]  # (B, dim/2), float32 even under autocast
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale-shift by the embedding, GroupNorm-SiLU-dropout-conv, plus skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * c_out))
        self.norm2 = group_norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2)  # (B, 3, HW, C)
        q, k, v = qkv.unbind(1)  # (B, HW, C) each
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv (28 -> 14 -> 7)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _check_arguments(channels: Sequence[int], num_res_blocks: int, emb_dim: int, dropout: float,
                     num_classes: int, groups: int, in_channels: int, patch_size: int = 1,
                     image_size: int = IMAGE_SIZE) -> None:
    """Raise ValueError (one line) for a configuration the network cannot be built from, for
    images of ``image_size`` x ``image_size`` pixels."""
    if len(channels) == 0 or any(c < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive integers, got {list(channels)}")
    if patch_size < 1 or image_size % patch_size != 0:
        raise ValueError(f"patch_size must divide {image_size}, got {patch_size} (use 1, 2 or 4)")
    size, factor = image_size // patch_size, 2 ** (len(channels) - 1)
    if size % factor != 0:
        levels = max(i + 1 for i in range(len(channels)) if size % 2 ** i == 0)
        raise ValueError(
            f"channels={list(channels)} has {len(channels)} levels, which halves {size}x{size} "
            f"feature maps {len(channels) - 1} times; {size} is not divisible by {factor}, use at most "
            f"{levels} levels" + (f" with patch_size {patch_size}" if patch_size > 1 else "")
        )
    if emb_dim < 2 or emb_dim % 2 != 0:
        raise ValueError(f"emb_dim must be a positive even integer, got {emb_dim}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    for name, value in [("num_res_blocks", num_res_blocks), ("num_classes", num_classes),
                        ("groups", groups), ("in_channels", in_channels)]:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


class ConditionalUNet(nn.Module):
    """Predicts the noise (or v) of a noisy image given its timestep index and class label."""

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256),
        num_res_blocks: int = 2,
        emb_dim: int = 128,
        dropout: float = 0.0,
        attention: bool = False,
        num_classes: int = 10,
        groups: int = 8,
        in_channels: int = 1,
        patch_size: int = 1,
        image_size: int = IMAGE_SIZE,
    ):
        super().__init__()
        _check_arguments(channels, num_res_blocks, emb_dim, dropout, num_classes, groups, in_channels,
                         patch_size, image_size)
        channels = list(channels)
        self.num_classes, self.patch_size = num_classes, patch_size
        # input height and width must be multiples of this
        self.downscale = patch_size * 2 ** (len(channels) - 1)
        c_image = in_channels * patch_size ** 2  # channels of the (patchified) image

        def res_block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, dropout, groups)

        # Conditioning: emb = MLP(sinusoid(t)) + label_emb(y), shape (B, emb_dim).
        self.time_emb = nn.Sequential(
            SinusoidalEmbedding(emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)  # row num_classes = null label

        self.stem = nn.Conv2d(c_image, channels[0], 3, padding=1)

        # Encoder: level i keeps one skip (its last feature map) for decoder level i.
        self.encoder = nn.ModuleList()
        self.downsamples = nn.ModuleList()  # nn.Identity after the last (lowest-resolution) level
        c_prev = channels[0]
        for i, c in enumerate(channels):
            blocks = [res_block(c_prev if j == 0 else c, c) for j in range(num_res_blocks)]
            self.encoder.append(nn.ModuleList(blocks))
            self.downsamples.append(Downsample(c) if i < len(channels) - 1 else nn.Identity())
            c_prev = c

        self.mid1 = res_block(channels[-1], channels[-1])
        self.mid_attn = SelfAttention(channels[-1], groups) if attention else nn.Identity()
        self.mid2 = res_block(channels[-1], channels[-1])

        # Decoder, deepest level first: the first block of a level eats the concatenated skip.
        self.decoder = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # nn.Identity after the first (full-resolution) level
        for i in reversed(range(len(channels))):
            c = channels[i]
            blocks = [res_block(c_prev + c if j == 0 else c, c) for j in range(num_res_blocks)]
            self.decoder.append(nn.ModuleList(blocks))
            self.upsamples.append(Upsample(c) if i > 0 else nn.Identity())
            c_prev = c

        self.head = nn.Sequential(
            group_norm(channels[0], groups), nn.SiLU(), nn.Conv2d(channels[0], c_image, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W), t: (B,) int or float timestep indices, y: (B,) int64 labels -> (B, C, H, W)."""
        if x.shape[-2] % self.downscale != 0 or x.shape[-1] % self.downscale != 0:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not divisible by {self.downscale} "
                f"(the network halves it {len(self.encoder) - 1} times"
                + (f" after {self.patch_size}x{self.patch_size} patches)" if self.patch_size > 1 else ")")
            )
        emb = self.time_emb(t) + self.label_emb(y)  # (B, emb_dim)

        p = self.patch_size
        h = self.stem(F.pixel_unshuffle(x, p) if p > 1 else x)  # (B, C p^2, H/p, W/p) into the stem
        skips = []
        for blocks, down in zip(self.encoder, self.downsamples):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            h = down(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for blocks, up in zip(self.decoder, self.upsamples):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, emb)
            h = up(h)

        out = self.head(h)  # (B, C p^2, H/p, W/p)
        return F.pixel_shuffle(out, p) if p > 1 else out  # (B, C, H, W)


def build_model(model_cfg, image_size: int = IMAGE_SIZE) -> ConditionalUNet:
    """The U-Net described by a ``ModelConfig`` for ``image_size`` pixels a side (the config's
    data.image_size); a bad combination is a one-line ConfigError, and so is a model too large
    to build (checked in closed form before any layer exists, for a ModelConfig that did not
    come through config validation)."""
    from dataclasses import asdict

    from .errors import ConfigError

    try:
        _check_arguments(**{k: v for k, v in asdict(model_cfg).items() if k != "attention"},
                         image_size=image_size)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    check_model_size(model_cfg)
    try:
        return ConditionalUNet(**asdict(model_cfg), image_size=image_size)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
