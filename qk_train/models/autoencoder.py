"""Image codec: images in [-1, 1] <-> normalised latents the decoder works in.

`tiny_ae` is a diffusers `AutoencoderTiny` with a small config, trained on the data first
(64x64x3 -> 16x16x4 with three levels); `pixel` is the identity (the tiny test preset);
`pretrained` loads an `AutoencoderTiny` from a local diffusers folder. Latents are shifted and
scaled to about unit variance with statistics measured on training data after the codec is
trained (`shift`, `scale` buffers, saved with the weights).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import CodecConfig


class PixelCodec(nn.Module):
    kind = "pixel"

    def __init__(self):
        super().__init__()
        self.channels = 3
        self.factor = 1

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return image  # (B, 3, H, W)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.clamp(-1.0, 1.0)


class TinyAutoencoder(nn.Module):
    kind = "tiny_ae"

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        from diffusers import AutoencoderTiny

        levels = len(cfg.block_channels)
        if cfg.kind == "pretrained":
            self.ae = AutoencoderTiny.from_pretrained(cfg.path, local_files_only=True)
        else:
            self.ae = AutoencoderTiny(
                encoder_block_out_channels=tuple(cfg.block_channels),
                decoder_block_out_channels=tuple(reversed(cfg.block_channels)),
                num_encoder_blocks=(1,) + (cfg.blocks_per_level,) * (levels - 1),
                num_decoder_blocks=(cfg.blocks_per_level,) * (levels - 1) + (1,),
                latent_channels=cfg.latent_channels,
            )
        self.channels = self.ae.config.latent_channels
        self.factor = 2 ** (len(self.ae.config.encoder_block_out_channels) - 1)
        self.register_buffer("shift", torch.zeros(self.channels))
        self.register_buffer("scale", torch.ones(self.channels))

    def encode_raw(self, image: torch.Tensor) -> torch.Tensor:
        return self.ae.encoder(image)  # (B, 3, H, W) -> (B, C, H/f, W/f)

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        return self.ae.decoder(latent)  # (B, C, h, w) -> (B, 3, H, W) in about [-1, 1]

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        z = self.encode_raw(image)
        return (z - self.shift[None, :, None, None]) * self.scale[None, :, None, None]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        z = latent / self.scale[None, :, None, None] + self.shift[None, :, None, None]
        return self.decode_raw(z).clamp(-1.0, 1.0)

    @torch.no_grad()
    def set_statistics(self, raw_latents: torch.Tensor) -> None:
        """Normalise latents to zero mean and unit variance per channel."""
        flat = raw_latents.transpose(0, 1).reshape(self.channels, -1)
        self.shift.copy_(flat.mean(1))
        self.scale.copy_(1.0 / flat.std(1).clamp_min(1e-4))


def build_codec(cfg: CodecConfig) -> nn.Module:
    if cfg.kind == "pixel":
        return PixelCodec()
    return TinyAutoencoder(cfg)
