"""CLIP as a classifier: zero-shot logits from class-name prompts, so it can be explained like any model."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}",)


class CLIPZeroShotClassifier(nn.Module):
    """``logits = logit_scale · cos(visual(x), class_embedding)`` for an open_clip model.

    Class embeddings are the normalised mean of the normalised text embeddings of every prompt
    template filled with the class name; they are computed once, without gradient.

    Args:
        clip_model: an open_clip ``CLIP`` model (``visual``, ``encode_text``, ``logit_scale``).
        class_names: C class names.
        tokenizer: ``open_clip.get_tokenizer(model_name)``; maps a list of strings to token ids.
        templates: prompt templates with one ``{}`` for the class name.

    Example:
        >>> import open_clip
        >>> clip = open_clip.create_model("ViT-B-32", pretrained=None)
        >>> clf = CLIPZeroShotClassifier(clip, ["cat", "dog"], open_clip.get_tokenizer("ViT-B-32"))
        >>> clf(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        clip_model: nn.Module,
        class_names: Sequence[str],
        tokenizer: Callable[[list[str]], Tensor],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
    ) -> None:
        super().__init__()
        if not class_names:
            raise ValueError("class_names is empty; give at least one class")
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"templates must be non-empty and each contain '{{}}'; got {list(templates)!r}")
        self.visual = clip_model.visual
        self.class_names = list(class_names)
        device = next(clip_model.parameters()).device
        with torch.no_grad():
            per_class = []
            for name in self.class_names:
                tokens = tokenizer([t.format(name) for t in templates]).to(device)
                text = F.normalize(clip_model.encode_text(tokens).float(), dim=-1)
                per_class.append(F.normalize(text.mean(dim=0), dim=-1))
            self.register_buffer("class_embeddings", torch.stack(per_class))  # (C, D)
            self.register_buffer("logit_scale", clip_model.logit_scale.detach().float().exp())

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> logits (B, C)."""
        image_features = F.normalize(self.visual(images).float(), dim=-1)
        return self.logit_scale * image_features @ self.class_embeddings.T
