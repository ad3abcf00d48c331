"""Restricted unpickling of old Prisma-layout ``.pt`` files: plain data only, no code from the file runs.

Old published SAE files wrap their weights as ``{"cfg": <config object>, "state_dict": {...}}``, where the
config is a pickled instance of a training-library class. ``torch.load(weights_only=True)`` refuses that
class. :func:`load_plain` reads such files with an unpickler that

* resolves only an allowlist of globals: torch's tensor rebuild functions, ``collections.OrderedDict``,
  torch dtypes and devices, and path classes (rebuilt as ``str``);
* rebuilds an instance of any other class named by the file as a plain ``dict`` of its state, without
  importing the class — allowed only where pickle creates an object without calling anything
  (``cls.__new__`` with ``NEWOBJ`` / ``copyreg._reconstructor`` on ``object``, then ``BUILD``);
* refuses, naming it, any global the file asks to *call* (``REDUCE``: ``os.system``, ``builtins.eval``, an
  unknown class's constructor, ...).
"""
from __future__ import annotations

import _compat_pickle
import collections
import pickle
import types
from pathlib import PurePath
from typing import Any, BinaryIO

import torch

__all__ = ["RefusedGlobal", "load_plain"]


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked to call a global outside the allowlist; ``name`` is its ``module.qualname``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refused global {name}: only plain data (tensors, containers, config objects) is loaded")
        self.name = name


def _path(*parts: str) -> str:
    """Path objects in a config become strings."""
    return str(PurePath(*parts))


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, requires_grad: bool, backward_hooks: Any,
                    metadata: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` without backward hooks (they would be called later)."""
    if backward_hooks:
        raise RefusedGlobal("torch._utils._rebuild_tensor_v2 with backward hooks")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, collections.OrderedDict(), metadata)


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any) -> torch.Tensor:
    """``torch._utils._rebuild_parameter`` without backward hooks."""
    if backward_hooks:
        raise RefusedGlobal("torch._utils._rebuild_parameter with backward hooks")
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


def _allowed(module: str, name: str) -> Any:
    """The allowlisted object for ``module.name``, or None."""
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
        return _rebuild_parameter
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if module == "torch" and (name == "device" or isinstance(vars(torch).get(name), torch.dtype)):  # no lazy imports
        return vars(torch)[name]
    if module == "pathlib" and name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
        return _path
    if (module, name) == ("copyreg", "_reconstructor"):  # protocols 0 and 1
        return _reconstructor
    if (module, name) == ("builtins", "object"):
        return object
    return None


class _Guard(type):
    """Metaclass of stand-ins: calling one (``REDUCE``) would mean running the file's code, so it refuses."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise RefusedGlobal(cls._global_name)


class _StandIn(metaclass=_Guard):
    """An object of a class the file names but that is never imported: only its state is kept."""

    _global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "_state", state)


def _stand_in(module: str, name: str) -> type:
    return _Guard(name.rsplit(".", 1)[-1], (_StandIn,), {"_global_name": f"{module}.{name}"})


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocols 0/1) for stand-ins on ``object`` only."""
    if not (isinstance(cls, _Guard) and base is object and state is None):
        raise RefusedGlobal(f"copyreg._reconstructor({getattr(cls, '__name__', cls)!r}, {getattr(base, '__name__', base)!r})")
    return object.__new__(cls)


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcodes can be overridden): globals through :func:`_allowed` or
    stand-ins, and ``BUILD`` (setting attributes) on stand-ins only, never on an allowlisted global."""

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names (torch.save writes protocol 2), as pickle maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _allowed(module, name)
        return _stand_in(module, name) if found is None else found

    def _load_build(self) -> None:
        target = self.stack[-2]
        if not isinstance(target, _StandIn):
            raise RefusedGlobal(f"setting the state of {getattr(target, '__qualname__', type(target).__qualname__)}")
        pickle._Unpickler.load_build(self)

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: _load_build}


def _plain(obj: Any) -> Any:
    """Stand-ins -> dicts of their state, recursively through containers."""
    if isinstance(obj, _StandIn):
        state = getattr(obj, "_state", {})
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ values)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise RefusedGlobal(f"{obj._global_name} (state of type {type(state).__name__}, not a dict of fields)")
        return {str(k): _plain(v) for k, v in state.items()}
    if isinstance(obj, dict):  # dict or OrderedDict: the only mappings the allowlist builds
        return type(obj)((k, _plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _pickle_module() -> types.ModuleType:
    """A module-like object for ``torch.load(pickle_module=...)``."""
    module = types.ModuleType("captum_fgattr_restricted_pickle")
    module.Unpickler = _RestrictedUnpickler
    module.load = lambda file, **kwargs: _RestrictedUnpickler(file, **kwargs).load()
    module.UnpicklingError = pickle.UnpicklingError
    return module


def load_plain(file: str | BinaryIO) -> Any:
    """``torch.load`` a file with the restricted unpickler (see module doc), on CPU.

    Raises:
        RefusedGlobal: the file asks to call a global outside the allowlist (``.name`` says which).
    """
    return _plain(torch.load(file, map_location="cpu", pickle_module=_pickle_module(), weights_only=False))
