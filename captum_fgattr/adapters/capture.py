"""Capture, in one forward + one backward, every block's attention probabilities and residual stream."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from captum_fgattr.adapters.base import ViTAdapter


_LIKELY_CAUSES = (
    "likely causes: the model (or part of it) runs under torch.no_grad() / torch.inference_mode() or detaches "
    "its activations, uses reentrant activation checkpointing (set_grad_checkpointing; use use_reentrant=False "
    "or turn it off), or is compiled (pass the uncompiled module, e.g. compiled._orig_mod)"
)


def _off_path(nodes: list[Tensor], names: list[str], output: Tensor) -> str:
    """Name the first captured tensor without autograd history (or the output)."""
    if not output.requires_grad:
        return "model (its output does not require grad)"
    return next(name for t, name in zip(nodes, names) if not t.requires_grad)


@dataclass
class Captured:
    """Tensors recorded during the forward pass inside :func:`capture`.

    Attributes:
        attn: per block, post-softmax attention (B, heads, N, N) — empty if attention was not asked for.
        resid: block index -> resid_post, the block's output (B, N, D), for the asked layers.
        attn_grad / resid_grad: the same-shaped gradients after :meth:`backward`.
    """

    attn: list[Tensor | None] = field(default_factory=list)
    resid: dict[int, Tensor] = field(default_factory=dict)
    attn_grad: list[Tensor] = field(default_factory=list)
    resid_grad: dict[int, Tensor] = field(default_factory=dict)
    #: block outputs as the model produced them (the graph nodes gradients are taken for)
    resid_raw: dict[int, Tensor] = field(default_factory=dict)
    sequence_first: bool = False

    def backward(self, output: Tensor) -> None:
        """One backward pass of the scalar ``output`` to every captured tensor."""
        if any(a is None for a in self.attn) or (not self.attn and not self.resid_raw):
            raise RuntimeError("nothing was captured: call the model inside the capture() block first")
        layers = sorted(self.resid_raw)
        nodes = [*self.attn, *(self.resid_raw[i] for i in layers)]
        names = [*(f"attention of block {i}" for i in range(len(self.attn))), *(f"output of block {i}" for i in layers)]
        if not output.requires_grad or any(not t.requires_grad for t in nodes):
            raise RuntimeError(f"the target logit is not connected by autograd to the {_off_path(nodes, names, output)}; "
                               f"{_LIKELY_CAUSES}")
        grads = torch.autograd.grad(output, nodes, allow_unused=True)
        unused = [name for name, g in zip(names, grads) if g is None]
        if unused:
            raise RuntimeError(f"the target logit does not depend on the captured {unused[0]}"
                               f"{f' (and {len(unused) - 1} more)' if len(unused) > 1 else ''}; {_LIKELY_CAUSES}")
        self.attn_grad = list(grads[: len(self.attn)])
        self.resid_grad = {i: g.transpose(0, 1) if self.sequence_first else g for i, g in zip(layers, grads[len(self.attn):])}

    def clear(self) -> None:
        self.attn.clear()
        self.resid.clear()
        self.attn_grad.clear()
        self.resid_grad.clear()
        self.resid_raw.clear()


@contextmanager
def capture(adapter: ViTAdapter, attention: bool = True, resid_layers: Iterable[int] = ()) -> Iterator[Captured]:
    """Record attention probabilities of every block (if ``attention``) and resid_post of
    ``resid_layers`` while the model runs inside the ``with`` block.

    Hooks are removed, changed flags restored and captured tensors dropped on exit, also when an
    exception is raised.

    Example:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=16)
        >>> from captum_fgattr.adapters import get_adapter
        >>> adapter = get_adapter(vit)
        >>> with capture(adapter, resid_layers=[1]) as cap:
        ...     logits = vit(torch.randn(2, 3, 32, 32))
        ...     cap.backward(logits[:, 0].sum())
        ...     cap.attn[0].shape, cap.resid_grad[1].shape
        (torch.Size([2, 3, 5, 5]), torch.Size([2, 5, 192]))
    """
    layers = sorted(set(resid_layers))
    for i in layers:
        if not 0 <= i < adapter.depth:
            raise ValueError(f"layer {i} is out of range for a model with {adapter.depth} blocks (0..{adapter.depth - 1})")
    captured = Captured(attn=[None] * adapter.depth if attention else [], sequence_first=adapter.sequence_first)

    def store_attn(layer: int):
        def store(probs: Tensor) -> None:
            captured.attn[layer] = probs
        return store

    def store_resid(layer: int):
        def store(_module, _inputs, output: Tensor) -> None:
            captured.resid_raw[layer] = output
            captured.resid[layer] = output.transpose(0, 1) if adapter.sequence_first else output
        return store

    with ExitStack() as undo:
        undo.callback(captured.clear)
        if attention:
            for i in range(adapter.depth):
                undo.callback(adapter.expose_attention(i, store_attn(i)))
        for i in layers:
            undo.callback(adapter.blocks[i].register_forward_hook(store_resid(i)).remove)
        yield captured
