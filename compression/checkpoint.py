"""Checkpoints that never run code named by the file: weights and plain data only.

A checkpoint is a ``.safetensors`` file: the state dict as tensors, and in its string metadata
the format, version, the *registered name* of the builder that makes the dense model, the
builder's keyword arguments (JSON), the compression recipe (JSON) and the structural transforms of
compression stages (JSON: ``[{"name": ..., "params": {...}}]``, replayed in order by the functions
``compression.stages.register_transform`` registers, after the recipe). Loading looks the name
up in a registry the user's code fills (``register_builder``); edgepack registers its own
builders. A name that is not registered is refused unless the caller trusts exactly that
``module:function`` (``trust_builder=``, ``edgepack export --trust-builder``).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from edgepack.errors import EdgepackError

from .recipe import compress

FORMAT = "edgepack.checkpoint"
VERSION = 2
LEGACY_VERSION = 1  # torch.save'd dict, read with weights_only=True
# edgepack's own builders: fixed import paths in edgepack's code, never taken from a file.
_BUILTIN_BUILDERS = {
    "edgepack.demo:digits_mlp": ("edgepack.demo", "digits_mlp"),
    "edgepack.kws.models:ds_cnn": ("edgepack.kws.models", "ds_cnn"),
    "edgepack.kws.models:ds_cnn_l": ("edgepack.kws.models", "ds_cnn_l"),
    "edgepack.benchmarks.lenet:lenet_300_100": ("edgepack.benchmarks.lenet", "lenet_300_100"),
    "edgepack.benchmarks.lenet:lenet_5": ("edgepack.benchmarks.lenet", "lenet_5"),
}
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


class CheckpointError(EdgepackError, ValueError):
    """A checkpoint cannot be written or read; the message names the file and what is wrong."""


class CheckpointFields(NamedTuple):
    """What rebuilds a checkpoint's model: the builder's name and arguments, the recipe, the transforms."""

    builder: str
    kwargs: dict
    recipe: dict | None
    transforms: list


def register_builder(name: str | Callable | None = None, fn: Callable | None = None):
    """Allow checkpoints to name ``fn`` as their builder under ``name``.

    Use as ``register_builder("my_net", make_net)``, as a decorator ``@register_builder("my_net")``,
    or bare ``@register_builder`` (the name is then ``"module:function"``).
    """
    if callable(name) and fn is None:
        return register_builder(None, name)
    if fn is None:
        return lambda function: register_builder(name, function)
    if not callable(fn):
        raise CheckpointError(f"register_builder({name!r}, ...): the builder must be callable, got {fn!r}")
    name = name or f"{fn.__module__}:{fn.__qualname__}"
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"a builder name must be a non-empty string, got {name!r}")
    _BUILDERS[name] = fn
    return fn


def registered_builders() -> list[str]:
    """The builder names checkpoints may use right now (edgepack's own and registered ones)."""
    return sorted(set(_BUILTIN_BUILDERS) | set(_BUILDERS))


def builder_name(builder: str | Callable) -> str:
    """The name a checkpoint records for ``builder``: its registered name, else ``"module:function"``."""
    if isinstance(builder, str):
        return builder
    names = [name for name, function in _BUILDERS.items() if function is builder]
    return names[0] if names else f"{builder.__module__}:{builder.__qualname__}"


def _builder(name: str, trusted: Iterable[str], path: Path) -> Callable[..., nn.Module]:
    """The function registered (or explicitly trusted) under ``name``; never imports otherwise."""
    if name in _BUILDERS:
        return _BUILDERS[name]
    if name in _BUILTIN_BUILDERS:
        module, attribute = _BUILTIN_BUILDERS[name]
        return getattr(importlib.import_module(module), attribute)
    if name in trusted:
        return _import_builder(name)
    raise CheckpointError(
        f"{path}: the checkpoint names the model builder {name!r}, which is not registered "
        f"(registered: {', '.join(registered_builders())}). Loading never imports code named by "
        f"a file: register the function in your code with "
        f"edgepack.compression.register_builder({name!r}, function), or, if you trust that "
        f"module, pass --trust-builder {name} (load_checkpoint(..., trust_builder={name!r}))")


def _import_builder(name: str) -> Callable[..., nn.Module]:
    """Import ``module:function`` (only for a name the caller or the saver chose explicitly)."""
    module_name, _, function_name = name.partition(":")
    if not module_name or not function_name:
        raise CheckpointError(f"a trusted builder must look like 'package.module:function', got {name!r}")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise CheckpointError(f"cannot import model builder {name!r}: {error} (its module must be "
                              "importable: installed, or its folder on PYTHONPATH)") from None
    if not callable(function):
        raise CheckpointError(f"model builder {name!r} is not callable")
    return function


def _check_plain(value, where: str) -> None:
    """Refuse anything but JSON-like data (int/float/str/bool/None/list/dict with str keys)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointError(f"{where}: {value!r} is not a finite number")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{where}: key {key!r} is not a string")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise CheckpointError(f"{where}: {type(value).__name__} is not plain data "
                          "(valid: int, float, str, bool, None, list, dict)")


def save_checkpoint(model: nn.Module, path: str | Path, builder: str | Callable,
                    builder_kwargs: dict | None = None, recipe: dict | None = None,
                    transforms: list[dict] | None = None) -> Path:
    """Save ``model`` as a .safetensors checkpoint, rebuilt on load by ``builder``, ``recipe`` and then
    ``transforms`` (the structural changes of compression stages, ``StageReport.transform``).

    ``builder`` is a registered name (``registered_builders()``), a registered function, or a
    ``"module:function"`` that a loader must then register or trust explicitly.
    """
    from safetensors.torch import save_file

    builder = builder_name(builder)
    if builder not in _BUILTIN_BUILDERS and builder not in _BUILDERS:
        _import_builder(builder)  # fail now, not at load time, if it is not even importable
    path = Path(path)
    tensors = {name: value.detach().cpu().contiguous().clone()
               for name, value in model.state_dict().items()}
    builder_kwargs = builder_kwargs or {}
    transforms = list(transforms or [])
    _check_fields(path, builder, builder_kwargs, recipe, tensors, transforms)  # refuse what loading would
    metadata = {"format": FORMAT, "version": str(VERSION), "builder": builder,
                "builder_kwargs": json.dumps(builder_kwargs), "recipe": json.dumps(recipe),
                "transforms": json.dumps(transforms)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_checkpoint(path: str | Path, trust_builder: str | Iterable[str] = ()) -> nn.Module:
    """Rebuild the model saved by ``save_checkpoint`` (in eval mode); never runs code the file names.

    ``trust_builder``: ``"module:function"`` names that may be imported if the file asks for
    them (everything else must be registered with ``register_builder``).
    """
    path = Path(path)
    trusted = {trust_builder} if isinstance(trust_builder, str) else set(trust_builder)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    (builder, kwargs, recipe, transforms), state = _read(path)
    function = _builder(builder, trusted, path)
    try:
        model = function(**kwargs)
    except Exception as error:
        raise CheckpointError(f"{path}: builder {builder!r}(**{kwargs!r}) failed: "
                              f"{type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{path}: builder {builder!r} returned {type(model).__name__}, "
                              "not a torch.nn.Module")
    if recipe:
        try:
            model, _ = compress(model, recipe, inplace=True, initialize=False)
        except EdgepackError:
            raise
        except Exception as error:
            raise CheckpointError(f"{path}: the checkpoint's recipe cannot be applied: "
                                  f"{type(error).__name__}: {error}") from None
    if transforms:
        from .stages import apply_transforms

        try:
            model = apply_transforms(model, transforms)
        except EdgepackError as error:
            raise CheckpointError(f"{path}: {error}") from None
    _load_state(model, state, path, builder)
    return model.eval()


def read_checkpoint_fields(path: str | Path) -> CheckpointFields:
    """A checkpoint's builder name, builder arguments, recipe and transforms, checked; builds nothing."""
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[CheckpointFields, dict]:
    """The fields and the state of a checkpoint in either format."""
    with path.open("rb") as file:
        head = file.read(9)
    safetensors = head[8:9] == b"{"  # u64 header length, then the JSON header
    if not safetensors and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):  # torch.save
        return _read_legacy(path)
    return _read_safetensors(path)


def _read_safetensors(path: Path) -> tuple[CheckpointFields, dict]:
    """The metadata and tensors of a version-2 checkpoint."""
    from safetensors import safe_open

    expected = ("expected an edgepack checkpoint (.safetensors written by "
                "edgepack.compression.save_checkpoint)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            state = {name: file.get_tensor(name) for name in file.keys()}
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: "
                              f"{error}); {expected}") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a .safetensors file without format={FORMAT!r} in its "
                              f"metadata; {expected}")
    if metadata.get("version") != str(VERSION):
        raise CheckpointError(f"{path}: checkpoint version {metadata.get('version')!r}; this "
                              f"edgepack reads versions {LEGACY_VERSION} and {VERSION}")
    fields = {}
    for key in ("builder_kwargs", "recipe", "transforms"):
        try:
            fields[key] = json.loads(metadata.get(key, "null"))
        except ValueError as error:
            raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON: {error}") from None
    return _check_fields(path, metadata.get("builder"), fields["builder_kwargs"] or {},
                         fields["recipe"], state, fields["transforms"] or [])


def _read_legacy(path: Path) -> tuple[CheckpointFields, dict]:
    """A version-1 checkpoint (torch.save'd dict), read with ``weights_only=True``."""
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise CheckpointError(f"{path}: not an edgepack checkpoint (it must load with "
                              f"torch.load(weights_only=True)): {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an edgepack checkpoint (missing format {FORMAT!r}); "
                              f"save models with edgepack.compression.save_checkpoint")
    if data.get("version") != LEGACY_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')!r} in a torch file; "
                              f"this edgepack reads version {LEGACY_VERSION} there "
                              f"(version {VERSION} is a .safetensors file)")
    return _check_fields(path, data.get("builder"), data.get("builder_kwargs") or {},
                         data.get("recipe"), data.get("state_dict"), [])


def _check_fields(path: Path, builder, kwargs, recipe, state, transforms) -> tuple[CheckpointFields, dict]:
    """A checkpoint's fields, or CheckpointError: the rules save_checkpoint and load_checkpoint share."""
    if not isinstance(builder, str) or not builder:
        raise CheckpointError(f"{path}: the checkpoint has no builder name (a string)")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: builder_kwargs must be a dict, got {type(kwargs).__name__}")
    _check_plain(kwargs, f"{path}: builder_kwargs")
    if recipe is not None and not isinstance(recipe, dict):
        raise CheckpointError(f"{path}: recipe must be a dict or null, got {type(recipe).__name__}")
    _check_plain(recipe, f"{path}: recipe")
    if not isinstance(transforms, list) or not all(
            isinstance(t, dict) and set(t) == {"name", "params"} and isinstance(t["name"], str)
            and isinstance(t["params"], dict) for t in transforms):
        raise CheckpointError(f"{path}: transforms must be a list of {{'name': str, 'params': dict}}, "
                              f"got {transforms!r:.200}")
    _check_plain(transforms, f"{path}: transforms")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: the state dict must map names to tensors")
    return CheckpointFields(builder, kwargs, recipe, transforms), state


def _load_state(model: nn.Module, state: dict, path: Path, builder: str) -> None:
    """Load ``state`` into ``model``, or say which keys are missing, unexpected or mis-shaped."""
    for name, module in model.named_modules():  # layers whose buffer sizes are data (codebooks)
        if callable(getattr(module, "prepare_state", None)):
            try:
                module.prepare_state(state, f"{name}." if name else "")
            except EdgepackError as error:
                raise CheckpointError(f"{path}: {error}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{name} {tuple(state[name].shape)} (model: {tuple(expected[name].shape)})"
              for name in expected if name in state and state[name].shape != expected[name].shape]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if names:
            shown = ", ".join(names[:8]) + (f", … ({len(names)} in all)" if len(names) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{path}: the weights do not match the model that builder "
                              f"{builder!r} and the recipe make; " + "; ".join(problems))
    try:
        model.load_state_dict(state)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot load the weights: {type(error).__name__}: "
                              f"{error}") from None
