"""Entries a plugin declares (``PROVIDES``): listed with their summaries from the plugin alone, registered by their
module at their first lookup, and a declaration its module does not keep is an error naming both."""
from __future__ import annotations

import sys

import pytest

from captum_fgattr.registry import Registry


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A light plugin declaring ``thing`` entries ``a`` (registered by ``thing_a.py``) and ``b`` (whose module forgets
    to register it); the module names, with the modules removed from ``sys.modules`` afterwards."""
    (tmp_path / "thing_plugin.py").write_text(
        'PROVIDES = {"thing": {"a": ("the first thing", "thing_a"), "b": ("the second", "thing_b")},'
        ' "other": {"z": ("not a thing", "thing_a")}}\n')
    (tmp_path / "thing_a.py").write_text("from thing_registry import THINGS\nTHINGS.add('a', 1)\n")
    (tmp_path / "thing_b.py").write_text("")
    (tmp_path / "thing_registry.py").write_text(
        "from captum_fgattr.registry import Registry\nTHINGS = Registry('thing', ['thing_plugin'])\nTHINGS.add('own', 0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("thing_plugin", "thing_a", "thing_b", "thing_registry"):
        sys.modules.pop(name, None)


@pytest.mark.usefixtures("plugin")
def test_declared_entries_are_listed_without_importing_their_module_and_registered_at_first_lookup():
    from thing_registry import THINGS

    assert list(THINGS) == ["own", "a", "b"] and "a" in THINGS and len(THINGS) == 3
    assert THINGS.summaries() == {"a": "the first thing", "b": "the second"}
    assert "thing_a" not in sys.modules and "thing_b" not in sys.modules
    assert THINGS["a"] == 1 and "thing_a" in sys.modules and list(THINGS) == ["own", "a", "b"]
    with pytest.raises(RuntimeError, match="thing_b is declared to register thing 'b' but does not"):
        THINGS["b"]
    with pytest.raises(KeyError, match=r"unknown thing 'c'; expected one of \['a', 'b', 'own'\]"):
        THINGS["c"]
    THINGS.remove("b")
    assert list(THINGS) == ["own", "a"] and "b" not in THINGS.summaries()


def test_a_registry_without_plugins_declares_nothing():
    registry = Registry("thing")
    registry.add("x", 1)
    assert registry.summaries() == {} and dict(registry) == {"x": 1}
