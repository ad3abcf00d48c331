"""What every supported ViT exposes to the attribution methods.

An adapter knows, for one model family, where the blocks are, how many prefix (class / register)
tokens precede the patch tokens, the patch grid, and how to expose each block's post-softmax
attention probabilities as tensors of the autograd graph.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

#: Receives one block's attention probabilities, shape (B, heads, N, N).
AttentionCallback = Callable[[Tensor], None]
#: Undoes whatever an adapter changed to expose attention probabilities.
Undo = Callable[[], None]


class ViTAdapter(ABC):
    """Uniform view of a Vision Transformer for attribution.

    Attributes:
        model: the module the user calls (classifier); its output is (B, num_classes) logits.
        blocks: transformer blocks, 0-based (``blocks[i]`` = timm ``model.blocks[i]``).
        num_prefix_tokens: tokens before the patch tokens (class token first, then registers).
        patch_size: (ph, pw) pixels.
        img_size: (H, W) pixels the model expects.
        embed_dim: width D of the residual stream.
        num_heads: attention heads per block.
    """

    model: nn.Module
    blocks: Sequence[nn.Module]
    num_prefix_tokens: int
    patch_size: tuple[int, int]
    img_size: tuple[int, int]
    embed_dim: int
    num_heads: int
    #: whether a block's output is laid out (N, B, D) instead of (B, N, D)
    sequence_first: bool = False

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def grid_size(self, inputs: Tensor | None = None) -> tuple[int, int]:
        """Patch grid (gh, gw) for ``inputs`` (B, C, H, W), or for the model's image size."""
        H, W = self.img_size if inputs is None else inputs.shape[-2:]
        return H // self.patch_size[0], W // self.patch_size[1]

    def check_input(self, inputs: Tensor) -> None:
        """Raise a clear error for inputs the model cannot be explained on."""
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor of shape (B, C, H, W); got {type(inputs).__name__}")
        if inputs.dim() != 4:
            raise ValueError(f"inputs must have shape (B, C, H, W); got shape {tuple(inputs.shape)}")
        if inputs.shape[0] == 0:
            raise ValueError("inputs hold no images (batch size 0)")
        if tuple(inputs.shape[-2:]) != tuple(self.img_size):
            raise ValueError(
                f"input image size {tuple(inputs.shape[-2:])} does not match the model's "
                f"image size {tuple(self.img_size)}"
            )
        if not torch.isfinite(inputs).all():
            raise ValueError("inputs contain NaN or Inf values")

    @abstractmethod
    def expose_attention(self, layer: int, callback: AttentionCallback) -> Undo:
        """Make block ``layer`` call ``callback(probs (B, heads, N, N))`` with the post-softmax
        attention probabilities that its output depends on; return a function undoing the change."""
