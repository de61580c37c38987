"""Stages for the methods that predate the stage interface (issue 15): "recipe" (any registered method by
``compress`` — hashed, circulant, LDR, codebook… — then fine-tuning), "hyper" (Hyper-Compression, no
retraining) and "sws" (soft weight-sharing retraining, then quantization into codebook layers). Each
returns the built-in "recipe" transform with the exact layer names it replaced, so checkpoints reload."""

from __future__ import annotations

import copy
import fnmatch
import time

from torch import nn

from edgepack.errors import EdgepackError

from .hyper import DEFAULT_BUDGET, hyper_compress
from .recipe import compress, load_recipe
from .stages import StageData, StageError, fine_tune, register_stage, stage_report
from .sws import KL_THRESHOLD, PI_ZERO, postprocess, retrain


def _layers(model: nn.Module) -> list[str]:
    """The names of the Linear / Conv2d layers a recipe can replace (as ``compress`` sees them)."""
    return [name for name, module in model.named_modules() if name and isinstance(module, (nn.Linear, nn.Conv2d))]


def _recipe_transform(recipe: dict) -> dict:
    """The transform that replays ``recipe`` (layer name → spec) on a freshly built model."""
    return {"name": "recipe", "params": {"recipe": copy.deepcopy(recipe)}}


@register_stage("recipe")
def recipe_stage(model: nn.Module, data: StageData, *, recipe, epochs: int = 1, lr: float = 1e-3,
                 progress: bool = True):
    """Compress the layers ``recipe`` (glob → {"method": ..., **params}, or a YAML/JSON file) matches, then
    fine-tune ``epochs`` with Adam at ``lr``; the transform names each replaced layer exactly."""
    started = time.perf_counter()
    try:
        recipe = load_recipe(recipe)
    except ValueError as error:
        raise StageError(f"stage 'recipe': recipe: {error}") from None
    try:
        compressed, report = compress(model, recipe)
    except EdgepackError:
        raise
    except (ValueError, TypeError) as error:
        raise StageError(f"stage 'recipe': {error}") from None
    chosen = {row.name: next(spec for pattern, spec in recipe.items() if fnmatch.fnmatchcase(row.name, pattern))
              for row in report}
    fine_tune(compressed, data, epochs=epochs, lr=lr, progress=progress, description="recipe fine-tune")
    params = {"recipe": recipe, "epochs": epochs, "lr": lr}
    methods = sorted({spec.get("method", "?") for spec in chosen.values()})
    return compressed, stage_report("recipe", compressed, data, params, transform=_recipe_transform(chosen),
                                    extra={"layers": len(chosen), "methods": ", ".join(methods)},
                                    started=started)


@register_stage("hyper")
def hyper_stage(model: nn.Module, data: StageData, *, budget: float = DEFAULT_BUDGET, calibration: int = 512,
                layers=None, group: int = 2, points: int | None = None, side: float | None = None,
                rings: int | None = None, progress: bool = True):
    """Hyper-Compression without retraining: each matched layer gets the fewest bytes whose relative RMS error
    stays within ``budget``, measured on the outputs for the first ``calibration`` training inputs (0: on
    the weights)."""
    started = time.perf_counter()
    if not (isinstance(calibration, int) and not isinstance(calibration, bool) and calibration >= 0):
        raise StageError(f"stage 'hyper': calibration={calibration!r}; give the number of training inputs to "
                         "measure output errors on (an integer >= 1), or 0 to measure weight errors")
    compressed, report = hyper_compress(model, budget=budget, calibration=data.calibration(calibration)
                                        if calibration else None, names=layers, group=group, points=points,
                                        side=side, rings=rings, progress=progress)
    if not report.recipe:
        raise StageError(f"stage 'hyper': nothing was compressed: every matched layer has fewer than 10 weights "
                         f"or no encoding within budget {budget} is smaller than float32")
    params = {"budget": budget, "calibration": calibration, "layers": layers, "group": group, "points": points,
              "side": side, "rings": rings}
    return compressed, stage_report("hyper", compressed, data, params, transform=_recipe_transform(report.recipe),
                                    extra={"layers": len(report.recipe)}, started=started)


@register_stage("sws")
def sws_stage(model: nn.Module, data: StageData, *, tau: float, epochs: int = 2, lr: float = 5e-4,
              components: int = 17, pi_zero: float = PI_ZERO, kl_threshold: float = KL_THRESHOLD, layers="*",
              codebook: bool = True, progress: bool = True):
    """Soft weight-sharing (Ullrich et al. 2017): retrain with a Gaussian-mixture prior at trade-off ``tau``
    (the paper's τ; no default, it depends on the data) over the matched layers, then set each weight to
    its component's mean; ``codebook`` stores those layers as codebook indices (else as dense floats)."""
    started = time.perf_counter()
    patterns = [layers] if isinstance(layers, str) else layers
    if not (isinstance(patterns, (list, tuple)) and patterns and all(isinstance(p, str) for p in patterns)):
        raise StageError(f"stage 'sws': layers={layers!r}; give a glob or a list of globs over layer names")
    candidates = _layers(model)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in candidates):
            raise StageError(f"stage 'sws': layers pattern {pattern!r} matches no Linear/Conv2d layer; they are: "
                             f"{candidates}")
    names = [name for name in candidates if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    marked, _ = compress(model, {name: {"method": "sws"} for name in names})
    try:
        prior, history = retrain(marked, data.train, epochs=epochs, tau=tau, components=components, lr=lr,
                                 pi_zero=pi_zero, batch_size=data.batch_size, val_data=data.val,
                                 progress=progress, seed=data.seed)
        report = postprocess(marked, prior, kl_threshold=kl_threshold, codebook=codebook)
    except EdgepackError as error:
        raise StageError(f"stage 'sws': {error}") from None
    weights = sum(row.weights for row in report)
    params = {"tau": tau, "epochs": epochs, "lr": lr, "components": components, "pi_zero": pi_zero,
              "kl_threshold": kl_threshold, "layers": layers, "codebook": codebook}
    method = "codebook" if codebook else "sws"
    return marked, stage_report(
        "sws", marked, data, params, transform=_recipe_transform({name: {"method": method} for name in names}),
        extra={"nonzero": sum(row.nonzero for row in report) / max(weights, 1),
               "values": len(report.codebook)}, started=started)
