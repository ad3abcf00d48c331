"""Typed method parameters, the method registry, and the baselines as Captum classes (Integrated Gradients,
Saliency, random): each class against its formula written out, the parameters' checks, and the stored keys of
the study's specs pinned (old run folders must keep reading and resuming)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from captum.attr import IntegratedGradients

from captum_fgattr.baselines import PatchIntegratedGradients, PatchSaliency, RandomPatches
from captum_fgattr.bench.config import Protocol
from captum_fgattr.bench.experiments import baseline_spec, control_specs, fg_spec, transmm_spec
from captum_fgattr.bench.methods import (METHODS, CaptumPatchMethod, FGParams, IntegratedGradientsParams,
                                         MethodParams, MethodSpec, RandomParams, build_method, register_method)
from captum_fgattr.bench.methods_json import parse_methods
from captum_fgattr.patch_attribution import PatchAttribution
from captum_fgattr.registry import Registry
from tests.reference import assert_close_relative


def per_patch(pixel: torch.Tensor) -> list[float]:
    """(C, 32, 32) pixel values -> the 16 sums over the channels and each 8 × 8 patch, row-major."""
    return [float(pixel[:, 8 * r:8 * r + 8, 8 * c:8 * c + 8].sum()) for r in range(4) for c in range(4)]


# -- the Captum classes ---------------------------------------------------------------------------------------
def test_integrated_gradients_sums_captum_pixel_attributions_per_patch_with_its_delta(vit):
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    black = (-0.5, -1.0, -2.0)
    patches, delta = PatchIntegratedGradients(vit, black, n_steps=20).attribute(
        images, target=targets, return_patches=True, return_convergence_delta=True)
    reference = torch.tensor(black).reshape(1, 3, 1, 1).expand_as(images)
    pixel = IntegratedGradients(vit).attribute(images, baselines=reference, target=targets, n_steps=20).detach()
    assert patches.shape == (2, 4, 4) and delta.shape == (2,)
    for i in range(2):
        assert_close_relative(patches[i].flatten(), per_patch(pixel[i]))
        with torch.no_grad():  # completeness gap: Σ attributions − (y(x) − y(x')), written out
            gap = pixel[i].sum() - (vit(images[i:i + 1])[0, targets[i]] - vit(reference[i:i + 1])[0, targets[i]])
        assert float(delta[i]) == pytest.approx(float(gap), rel=1e-4, abs=1e-5)
    scalar = PatchIntegratedGradients(vit, -1.0, n_steps=20).attribute(images, target=targets, return_patches=True)
    pixel = IntegratedGradients(vit).attribute(images, baselines=-1.0, target=targets, n_steps=20).detach()
    for i in range(2):
        assert_close_relative(scalar[i].flatten(), per_patch(pixel[i]))
    with pytest.raises(ValueError, match="baseline has 2 values for 3 channels"):
        PatchIntegratedGradients(vit, (0.0, 1.0)).attribute(images, target=targets)


def test_saliency_is_the_absolute_input_gradient_summed_per_patch(vit):
    images, targets = torch.randn(2, 3, 32, 32), [2, 4]
    patches = PatchSaliency(vit).attribute(images, target=targets, return_patches=True)
    for i, t in enumerate(targets):
        x = images[i:i + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(vit(x)[0, t], x)
        assert_close_relative(patches[i].flatten(), per_patch(grad[0].abs()))


def test_random_maps_are_a_function_of_seed_and_sample_id_only(vit):
    images = torch.randn(3, 3, 32, 32)
    method = RandomPatches(vit, seed=3)
    together = method.attribute(images, sample_ids=[10, 11, 12], return_patches=True)
    alone = method.attribute(images[1:2], sample_ids=[11], return_patches=True)
    assert torch.equal(together[1], alone[0]) and not torch.equal(together[0], together[1])
    for i, sample_id in enumerate((10, 11, 12)):  # the formula: torch.rand(P) seeded with seed · 1000003 + id
        expected = torch.rand(16, generator=torch.Generator().manual_seed(3 * 1_000_003 + sample_id))
        assert torch.equal(together[i].flatten(), expected)
    other_seed = RandomPatches(vit, seed=4).attribute(images, sample_ids=[10, 11, 12], return_patches=True)
    assert not torch.equal(other_seed, together)
    default = method.attribute(images, return_patches=True)  # no ids: 0 for every image
    assert torch.equal(default[0], default[2])
    with pytest.raises(ValueError, match="sample_ids has 2 entries for a batch of 3 images"):
        method.attribute(images, sample_ids=[1, 2])


@pytest.mark.parametrize("cls", [PatchIntegratedGradients, PatchSaliency])
def test_pixel_baselines_resolve_and_check_the_target_like_the_other_methods(vit, cls):
    images = torch.randn(2, 3, 32, 32)
    predicted = vit(images).argmax(dim=1)
    torch.testing.assert_close(cls(vit).attribute(images), cls(vit).attribute(images, target=predicted))
    for bad in (-1, 5):
        with pytest.raises(ValueError, match="out of range for 5 classes"):
            cls(vit).attribute(images, target=bad)


@pytest.mark.parametrize("cls", [PatchIntegratedGradients, PatchSaliency])
def test_a_given_target_costs_no_forward_beyond_captums_own(vit, cls):
    """The class-range check reads the logits Captum computes anyway: as many model calls as Captum's own method
    (IntegratedGradients with its convergence delta, which the benchmark stores / Saliency) makes, same maps."""
    from captum.attr import IntegratedGradients, Saliency

    calls = []
    handle = vit.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    try:
        images, target = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
        ours = cls(vit).attribute(images, target=target)
        ours_calls, calls[:] = list(calls), []
        if cls is PatchSaliency:
            theirs = Saliency(vit).attribute(images.clone().requires_grad_(True), target=target)
        else:
            theirs, _ = IntegratedGradients(vit).attribute(images, baselines=torch.zeros_like(images), target=target,
                                                           n_steps=50, internal_batch_size=2 * 50,
                                                           return_convergence_delta=True)
    finally:
        handle.remove()
    assert ours_calls == calls and len(calls) >= 1
    patch = vit.patch_embed.patch_size[0]
    expected = theirs.sum(dim=1).unfold(1, patch, patch).unfold(2, patch, patch).sum(dim=(-1, -2))
    torch.testing.assert_close(ours[:, 0, ::patch, ::patch], expected)


def test_the_benchmark_keeps_the_integrated_gradients_delta_per_call(vit):
    method = build_method(MethodSpec("integrated_gradients", {"n_steps": 8}), vit)
    assert isinstance(method, CaptumPatchMethod) and method.convergence_delta is None
    images, targets = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    maps = method(images, targets, torch.arange(3))
    expected, delta = PatchIntegratedGradients(vit, 0.0, 8).attribute(images, target=targets, return_patches=True,
                                                                      return_convergence_delta=True)
    assert torch.equal(maps, expected.flatten(1)) and torch.equal(method.convergence_delta, delta)
    assert build_method(MethodSpec("saliency"), vit).convergence_delta is None


# -- typed parameters -----------------------------------------------------------------------------------------
def test_each_family_builds_its_typed_parameters():
    assert MethodSpec("integrated_gradients", {"baseline": [-1, 0.5, 2]}).typed_params == \
        IntegratedGradientsParams(baseline=(-1.0, 0.5, 2.0), n_steps=50)
    assert MethodSpec("integrated_gradients").typed_params == IntegratedGradientsParams(0.0, 50)
    assert MethodSpec("random", {"seed": 7}).typed_params == RandomParams(7)
    assert MethodSpec("rollout").typed_params == MethodParams()
    fg = MethodSpec("fg", {"layers": [3, 1], "kappa": 1})
    assert fg.typed_params == fg.fg == FGParams((1, 3), kappa=1.0)
    assert isinstance(fg.fg.kappa, float)


@pytest.mark.parametrize("params_type, params, message", [
    (FGParams, {"layers": [1], "kappa": -0.5}, r"kappa=-0.5; expected a finite number >= 0"),
    (FGParams, {"layers": [1], "c_max": 0.5}, r"c_max=0.5; expected a finite number >= 1"),
    (FGParams, {"layers": [1], "kappa": float("nan")}, r"kappa=nan; expected a finite number"),
    (FGParams, {"layers": [1], "kappa": "0.5"}, r"kappa='0.5' is not float"),
    (FGParams, {"layers": [1], "variant": "combine"}, r"variant='combine'; expected one of \['combined', "),
    (FGParams, {"layers": [1], "mad_eps": "before"}, r"mad_eps='before'; expected one of \['after_scale', 'in_mad'\]"),
    (FGParams, {"layers": [1], "shuffle_seed": 1.0}, r"shuffle_seed=1.0 is not int \| None"),
    (FGParams, {"layers": [True]}, r"layers=\[True\] is not list\[int\]"),
    (FGParams, {"layers": []}, r"layers=\[\]; expected at least one block index >= 0"),
    (FGParams, {"layers": [-1]}, r"layers=\[-1\]; expected at least one block index >= 0"),
    (FGParams, {"variant": "combined"}, r"missing required parameter 'layers' \(list\[int\]\); accepted: layers: "),
    (IntegratedGradientsParams, {"n_steps": 0}, r"n_steps=0; expected an int >= 1"),
    (IntegratedGradientsParams, {"n_steps": 1.5}, r"n_steps=1.5 is not int"),
    (IntegratedGradientsParams, {"baseline": "black"}, r"baseline='black' is not float \| list\[float\]"),
    (IntegratedGradientsParams, {"baseline": []}, r"baseline=\[\]; expected a finite number or a non-empty list"),
    (IntegratedGradientsParams, {"baseline": [0.0, float("inf")]}, r"baseline=\[0.0, inf\]; expected a finite"),
    (IntegratedGradientsParams, {"steps": 10}, r"unknown parameter\(s\) \['steps'\]; accepted: "
                                               r"baseline: float \| list\[float\], n_steps: int$"),
    (RandomParams, {"seed": "1"}, r"seed='1' is not int"),
    (MethodParams, {"seed": 1}, r"unknown parameter\(s\) \['seed'\]; accepted: none"),
])
def test_typed_parameters_name_the_refused_field(params_type, params, message):
    with pytest.raises(ValueError, match=message):
        params_type.from_params(params)


def test_specs_and_the_methods_json_refuse_bad_parameters_once_the_same_way():
    with pytest.raises(ValueError, match=r"n_steps=0; expected an int >= 1"):
        MethodSpec("integrated_gradients", {"n_steps": 0})
    with pytest.raises(ValueError, match=r"--methods\[0\] \(integrated_gradients\): n_steps=0; expected an int >= 1"):
        parse_methods('[{"name": "integrated_gradients", "params": {"n_steps": 0}}]')
    with pytest.raises(ValueError, match=r"--methods\[0\] \(random\): seed=1.5 is not int"):
        parse_methods('[{"name": "random", "params": {"seed": 1.5}}]')


# -- the registry ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConstantParams(MethodParams):
    value: float = 1.0


def test_a_method_with_parameters_is_one_params_class_and_one_registry_entry(vit):
    class Constant(PatchAttribution):
        def __init__(self, model, value):
            super().__init__(model)
            self.value = value

        def _patch_relevance(self, images, target, extra):
            return torch.full((images.shape[0], 16), self.value)

    assert isinstance(METHODS, Registry)
    register_method("constant", ConstantParams)(
        lambda model, saes, params: CaptumPatchMethod(Constant(model, params.value)))
    try:
        (spec,) = parse_methods('[{"name": "constant", "params": {"value": 2}}]')
        assert spec.key == '{"name": "constant", "params": {"value": 2}}' and spec.typed_params == ConstantParams(2.0)
        maps = build_method(spec, vit)(torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), torch.arange(2))
        assert torch.equal(maps, torch.full((2, 16), 2.0))
        with pytest.raises(ValueError, match=r"\(constant\): unknown parameter\(s\) \['v'\]; accepted: value: float"):
            parse_methods('[{"name": "constant", "params": {"v": 2}}]')
        with pytest.raises(ValueError, match="method 'constant' is already registered"):
            register_method("constant")(lambda model, saes, params: None)
    finally:
        METHODS.remove("constant")
    with pytest.raises(ValueError, match="unknown method 'constant'"):
        MethodSpec("constant")


# -- the stored keys ------------------------------------------------------------------------------------------
def test_the_study_specs_keep_their_stored_keys():
    """Written out literally: a change here would orphan the results of every existing run folder."""
    fg = fg_spec([1], "combined", 0.5, 10.0)
    keys = [spec.key for spec in (
        transmm_spec(), fg, fg_spec([3, 2], "grad_input", 1, 50), fg_spec([4], "combined", 0.1, 2.0, mad_eps="in_mad"),
        *[s for specs in control_specs(fg, Protocol(shuffle_seeds=(0,), permute_seeds=(2,))).values() for s in specs],
        *[baseline_spec(name, Protocol()) for name in Protocol().baselines],
        baseline_spec("integrated_gradients", Protocol(black_input=(-1.0, -1.0, -1.0))),
        baseline_spec("integrated_gradients", Protocol(black_input=(-0.5, -1.0, -2.0))))]
    assert keys == [
        '{"name": "transmm", "params": {}}',
        '{"name": "fg", "params": {"c_max": 10.0, "kappa": 0.5, "layers": [1], "variant": "combined"}}',
        '{"name": "fg", "params": {"c_max": 50.0, "kappa": 1.0, "layers": [2, 3], "variant": "grad_input"}}',
        '{"name": "fg", "params": {"c_max": 2.0, "kappa": 0.1, "layers": [4], "mad_eps": "in_mad", "variant": "combined"}}',
        '{"name": "fg", "params": {"c_max": 10.0, "kappa": 0.5, "layers": [1], "shuffle_seed": 0, "variant": "combined"}}',
        '{"name": "fg", "params": {"c_max": 10.0, "kappa": 0.5, "layers": [1], "variant": "grad_input"}}',
        '{"name": "fg", "params": {"c_max": 10.0, "kappa": 0.5, "layers": [1], "variant": "grad_input_centered"}}',
        '{"name": "fg", "params": {"c_max": 10.0, "kappa": 0.5, "layers": [1], "variant": "bias_projection"}}',
        '{"name": "fg", "params": {"c_max": 10.0, "kappa": 0.5, "layers": [1], "permute_seed": 2, "variant": "combined"}}',
        '{"name": "gradcam", "params": {}}',
        '{"name": "integrated_gradients", "params": {}}',
        '{"name": "saliency", "params": {}}',
        '{"name": "rollout", "params": {}}',
        '{"name": "raw_attention", "params": {}}',
        '{"name": "random", "params": {}}',
        '{"name": "attnlrp", "params": {}}',
        '{"name": "integrated_gradients", "params": {"baseline": -1.0}}',
        '{"name": "integrated_gradients", "params": {"baseline": [-0.5, -1.0, -2.0]}}',
    ]
    for key in keys:  # as a run folder reads them back
        stored = json.loads(key)
        assert MethodSpec(stored["name"], stored["params"]).key == key
