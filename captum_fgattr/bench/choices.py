"""The named choices a run offers on the command line (score variants, controls, metric presets, PF scales,
experiments), in a module that imports nothing, so that ``fgattr <command> --help`` lists them in an instant.
:mod:`captum_fgattr.bench.config` checks run descriptions against them."""
from __future__ import annotations

__all__ = ["METRIC_PRESETS", "PF_SCALES", "VARIANTS", "CONTROLS", "DEFAULT_CONTROLS", "SELECTIONS", "TEST"]

METRIC_PRESETS: tuple[str, ...] = ("paper", "thesis-code")
PF_SCALES: tuple[str, ...] = ("unit", "patches")
#: score variants of the single-layer sweep: the method (``combined``) and its ablations
VARIANTS: tuple[str, ...] = ("combined", "activation", "gradient", "gradient_signed")
#: controls of the test experiment; ``shuffled_decoder`` runs once per ``Protocol.shuffle_seeds`` seed
CONTROLS: tuple[str, ...] = ("shuffled_decoder", "grad_input", "grad_input_centered", "bias_projection", "token_norm",
                             "permuted_gates")
DEFAULT_CONTROLS: tuple[str, ...] = ("shuffled_decoder", "grad_input", "grad_input_centered", "bias_projection",
                                     "permuted_gates")
#: the experiments that end in a selection (single layer, multi-layer, κ × c_max) and the test experiment, as
#: :mod:`captum_fgattr.bench.experiments` names them in a run's store
SELECTIONS: tuple[str, ...] = ("single_layer", "multi_layer", "kappa_cmax")
TEST = "test"
