"""What every supported ViT exposes to the attribution methods.

An adapter knows, for one model family, where the blocks are, how many prefix (class / register)
tokens precede the patch tokens, the patch grid, and how to expose each block's post-softmax
attention probabilities as tensors of the autograd graph.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from timm.layers import DropPath
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

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
        in_chans: channels C of the images the model expects (3: RGB; 1: grayscale, e.g. timm ``in_chans=1``).
        embed_dim: width D of the residual stream.
        num_heads: attention heads per block.
        readout_rows: token rows whose relevance the output is read from (class token; DeiT distilled:
            class and distillation tokens, whose heads the model averages).
        dynamic_img_size: whether the model accepts image sizes other than ``img_size``.
        dynamic_img_pad: whether the patch embedding pads a partial last patch (else it drops it).
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
    readout_rows: tuple[int, ...] = (0,)
    dynamic_img_size: bool = False
    dynamic_img_pad: bool = False
    in_chans: int = 3

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def grid_size(self, inputs: Tensor | None = None) -> tuple[int, int]:
        """Patch grid (gh, gw) for ``inputs`` (B, C, H, W), or for the model's image size: a partial
        last patch counts if the patch embedding pads it (``dynamic_img_pad``), else it is dropped."""
        H, W = self.img_size if inputs is None else inputs.shape[-2:]
        (ph, pw), ceil = self.patch_size, self.dynamic_img_pad
        return (-(-H // ph), -(-W // pw)) if ceil else (H // ph, W // pw)

    def check_input(self, inputs: Tensor) -> None:
        """Raise a clear error for inputs the model cannot be explained on, or a model state in which
        patch tokens do not map to fixed image patches (patch dropout active)."""
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor of shape (B, C, H, W); got {type(inputs).__name__}")
        if inputs.dim() != 4:
            raise ValueError(f"inputs must have shape (B, C, H, W); got shape {tuple(inputs.shape)}")
        if inputs.shape[0] == 0:
            raise ValueError("inputs hold no images (batch size 0)")
        if not self.dynamic_img_size and tuple(inputs.shape[-2:]) != tuple(self.img_size):
            raise ValueError(
                f"input image size {tuple(inputs.shape[-2:])} does not match the model's "
                f"image size {tuple(self.img_size)}"
            )
        H, W = inputs.shape[-2:]
        if self.dynamic_img_size and not self.dynamic_img_pad and (H % self.patch_size[0] or W % self.patch_size[1]):
            raise ValueError(
                f"input image size {(H, W)} is not a multiple of the patch size {self.patch_size}; this model "
                "neither pads nor crops other sizes (timm dynamic_img_pad=False): resize or pad the images"
            )
        if min(self.grid_size(inputs)) < 1:
            raise ValueError(f"input image size {tuple(inputs.shape[-2:])} is smaller than one patch {self.patch_size}")
        if not torch.isfinite(inputs).all():
            raise ValueError("inputs contain NaN or Inf values")
        dropout = self.active_patch_dropout()
        if dropout:
            raise ValueError(
                f"patch dropout is active ({dropout}, model in train mode): tokens are dropped at random, so "
                "relevance cannot be mapped to patches; call model.eval() or set the dropout rate to 0"
            )
        self.check_mode()

    def active_patch_dropout(self) -> str:
        """Describes the model's patch dropout if it drops tokens in the current mode, else ''."""
        return ""

    def check_mode(self) -> None:
        """Refuse a model whose output changes from call to call or with the batch (modules in train mode:
        dropout / stochastic depth with p > 0, attention dropout, batch norm); warn if it is in train mode
        without such modules (a custom module may still behave differently, and eval mode is what is meant)."""
        effects = ((name or type(self.model).__name__, _train_mode_effect(module))
                   for name, module in self.model.named_modules() if module.training)
        active = [f"{name} ({effect})" for name, effect in effects if effect]
        if active:
            shown = ", ".join(active[:3]) + (f" and {len(active) - 3} more" if len(active) > 3 else "")
            raise ValueError(f"the model is in train mode with modules that change its output from call to call or with "
                             f"the batch: {shown}; the map would be random: call model.eval()")
        if self.model.training:
            warnings.warn("the model is in train mode (no dropout, stochastic depth or batch norm is active, so the map "
                          "is the eval-mode one unless a custom module checks self.training); call model.eval()",
                          UserWarning)

    def check_tokens(self, num_tokens: int, inputs: Tensor) -> None:
        """Raise if the model ran on ``num_tokens`` tokens other than prefix + patch grid of ``inputs``."""
        gh, gw = self.grid_size(inputs)
        if num_tokens != self.num_prefix_tokens + gh * gw:
            raise ValueError(
                f"the model ran on {num_tokens} tokens, but {self.num_prefix_tokens} prefix tokens + a {gh}x{gw} "
                f"patch grid for input size {tuple(inputs.shape[-2:])} and patch size {self.patch_size} make "
                f"{self.num_prefix_tokens + gh * gw}; token dropping or merging is not supported"
            )

    @abstractmethod
    def expose_attention(self, layer: int, callback: AttentionCallback) -> Undo:
        """Make block ``layer`` call ``callback(probs (B, heads, N, N))`` with the post-softmax
        attention probabilities that its output depends on; return a function undoing the change."""


def _train_mode_effect(module: nn.Module) -> str:
    """What ``module`` does differently in train mode that makes the output random or batch-dependent, or ''."""
    if isinstance(module, _DropoutNd) and module.p > 0:
        return f"{type(module).__name__} p={module.p}"
    if isinstance(module, DropPath) and module.drop_prob > 0:
        return f"stochastic depth drop_prob={module.drop_prob}"
    if isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
        return f"attention dropout={module.dropout}"
    if isinstance(module, _BatchNorm):
        return "batch statistics"
    return ""
