"""Default method labels: short, the protocol's for FG-TransMM, and one per method in a --methods list."""
from __future__ import annotations

import itertools

import pytest

from captum_fgattr.bench.experiments import fg_spec_of
from captum_fgattr.bench.methods import FGParams, MethodSpec
from captum_fgattr.bench.methods_json import parse_methods


def test_an_fg_spec_without_label_reads_like_the_protocols_rows():
    spec = MethodSpec("fg", {"c_max": 10.0, "kappa": 0.5, "layers": [3, 4], "variant": "combined"})
    assert spec.label == "FG L[3,4] combined κ=0.5 c=10"
    for params, label in ((FGParams(layers=(6,)), "FG L6 combined κ=0.5 c=10"),
                          (FGParams(layers=(2, 3, 4), variant="gradient", kappa=1.0, c_max=50.0),
                           "FG L[2,3,4] gradient κ=1 c=50"),
                          (FGParams(layers=(1,), shuffle_seed=3), "FG L1 combined κ=0.5 c=10 shuffled decoder s3"),
                          (FGParams(layers=(1, 2), permute_seed=0, mad_eps="in_mad"),
                           "FG L[1,2] combined κ=0.5 c=10 permuted gates s0 scale in_mad")):
        assert MethodSpec("fg", params.to_params()).label == fg_spec_of(params).label == label


def test_other_methods_keep_name_and_given_parameters():
    assert MethodSpec("random", {"seed": 4}).label == "random(seed=4)"
    assert MethodSpec("gradcam").label == "gradcam"
    assert MethodSpec("fg", {"layers": [6]}, "mine").label == "mine"


def test_distinct_fg_configurations_get_distinct_labels():
    grid = itertools.product([(1,), (1, 2), (12,)], ["combined", "activation"], [0.1, 0.5, 1.0], [2.0, 10.0],
                             [None, 0, 1], [None, 0], ["after_scale", "in_mad"])
    specs = [MethodSpec("fg", FGParams(layers=layers, variant=variant, kappa=kappa, c_max=c_max, shuffle_seed=shuffle,
                                       permute_seed=permute, mad_eps=eps).to_params())
             for layers, variant, kappa, c_max, shuffle, permute, eps in grid]
    assert len({s.label for s in specs}) == len({s.key for s in specs}) == len(specs)


@pytest.mark.parametrize("entries, message", [
    ('{"name": "fg", "params": {"layers": [6]}}, {"name": "fg", "params": {"layers": [6], "kappa": 0.5}}',
     r"--methods\[1\] \(fg\): the same label 'FG L6 combined κ=0.5 c=10' as --methods\[0\]"),
    ('{"name": "random", "label": "x"}, {"name": "random", "label": "y"}',
     r"--methods\[1\] \(random\): the same method and parameters as --methods\[0\]"),
    ('{"name": "random"}, {"name": "gradcam", "label": "random"}', r"the same label 'random' as --methods\[0\]"),
])
def test_a_methods_list_refuses_two_entries_a_table_could_not_tell_apart(entries, message):
    with pytest.raises(ValueError, match=message):
        parse_methods(f"[{entries}]")
