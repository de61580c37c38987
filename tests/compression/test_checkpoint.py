"""Checkpoints: weights and plain data only; builders come from a registry, never from the file."""

import json
import pickle
import subprocess
import sys
import uuid

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgepack.compression import (
    CheckpointError,
    compress,
    load_checkpoint,
    register_builder,
    registered_builders,
    save_checkpoint,
)
from edgepack.demo import digits_mlp
from edgepack.errors import EdgepackError

RECIPE = {"fc1": {"method": "hashed", "ratio": 1 / 8, "num_hashes": 2}, "fc2": {"method": "ldr", "rank": 2}}


def attack_files(tmp_path, marker):
    """The issue's attack, as a v2 (.safetensors) and a v1 (torch .pt) checkpoint."""
    kwargs = {"command": f"touch {marker}"}
    v2 = tmp_path / "evil.safetensors"
    save_file({"w": torch.zeros(1)}, str(v2), metadata={
        "format": "edgepack.checkpoint", "version": "2", "builder": "os:system",
        "builder_kwargs": json.dumps(kwargs), "recipe": "null"})
    v1 = tmp_path / "evil.pt"
    torch.save({"format": "edgepack.checkpoint", "version": 1, "builder": "os:system",
                "builder_kwargs": kwargs, "recipe": None, "state_dict": {}}, v1)
    return [v2, v1]


def test_round_trip_safetensors(tmp_path):
    torch.manual_seed(0)
    model, _ = compress(digits_mlp(hidden=32), RECIPE)
    path = save_checkpoint(model, tmp_path / "m.safetensors", "edgepack.demo:digits_mlp",
                           {"hidden": 32}, RECIPE)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    x = torch.randn(4, 64)
    torch.testing.assert_close(load_checkpoint(path)(x), model.eval()(x))


def test_legacy_v1_checkpoint_of_a_registered_builder_loads(tmp_path):
    torch.manual_seed(0)
    model, _ = compress(digits_mlp(hidden=16), RECIPE)
    path = tmp_path / "old.pt"
    torch.save({"format": "edgepack.checkpoint", "version": 1, "builder": "edgepack.demo:digits_mlp",
                "builder_kwargs": {"hidden": 16}, "recipe": RECIPE, "state_dict": model.state_dict()}, path)
    x = torch.randn(3, 64)
    torch.testing.assert_close(load_checkpoint(path)(x), model.eval()(x))


def test_the_issue_attack_does_not_run_in_either_format(tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    for path in attack_files(tmp_path, marker):
        with pytest.raises(CheckpointError, match=r"'os:system', which is not registered") as info:
            load_checkpoint(path)
        assert "register_builder" in str(info.value) and "--trust-builder os:system" in str(info.value)
        assert "edgepack.demo:digits_mlp" in str(info.value)  # lists what is registered
        assert not marker.exists()
    # trusting a different builder does not trust this one
    with pytest.raises(CheckpointError, match="not registered"):
        load_checkpoint(attack_files(tmp_path, marker)[0], trust_builder="os:getcwd")
    assert not marker.exists()


def test_the_issue_attack_does_not_run_through_the_cli(tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    for path in attack_files(tmp_path, marker):
        result = subprocess.run([sys.executable, "-m", "edgepack.cli", "export", str(path),
                                 "--example-shape", "1,64", "-o", str(tmp_path / "m.onnx")],
                                capture_output=True, text=True)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("edgepack export: error:") and "not registered" in result.stderr
        assert not marker.exists()


def make_tiny(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))


def test_registered_and_trusted_builders(tmp_path):
    model = make_tiny(6)
    register_builder("tests.tiny", make_tiny)
    path = save_checkpoint(model, tmp_path / "t.safetensors", "tests.tiny", {"width": 6})
    x = torch.randn(2, 4)
    torch.testing.assert_close(load_checkpoint(path)(x), model(x))
    # saving a function by object uses its registered name
    assert save_checkpoint(model, tmp_path / "u.safetensors", make_tiny, {"width": 6})
    # a module:function that is not registered needs an explicit trust
    path = save_checkpoint(model, tmp_path / "v.safetensors", "collections:OrderedDict")
    with pytest.raises(CheckpointError, match="not registered"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="returned OrderedDict, not a torch.nn.Module"):
        load_checkpoint(path, trust_builder="collections:OrderedDict")


def test_decorator_registration_default_name():
    @register_builder
    def my_net():
        return make_tiny()

    @register_builder("my-named-net")
    def other():
        return make_tiny()

    names = registered_builders()
    assert f"{__name__}:test_decorator_registration_default_name.<locals>.my_net" in names
    assert "my-named-net" in names


def test_kwargs_must_be_plain_data(tmp_path):
    with pytest.raises(CheckpointError, match="Tensor is not plain data"):
        save_checkpoint(make_tiny(), tmp_path / "x.safetensors", "edgepack.demo:digits_mlp",
                        {"hidden": torch.tensor(3)})
    with pytest.raises(CheckpointError, match="not a finite number"):
        save_checkpoint(make_tiny(), tmp_path / "x.safetensors", "edgepack.demo:digits_mlp",
                        {"hidden": float("nan")})


def test_save_refuses_what_load_would_refuse(tmp_path):
    """A recipe given as a YAML path (or a list) was saved, then every load refused the file."""
    for recipe in ("recipe.yaml", [RECIPE]):
        path = tmp_path / "r.safetensors"
        with pytest.raises(CheckpointError, match="recipe must be a dict or null"):
            save_checkpoint(digits_mlp(), path, "edgepack.demo:digits_mlp", recipe=recipe)
        assert not path.exists()
    with pytest.raises(CheckpointError, match="builder_kwargs must be a dict"):
        save_checkpoint(digits_mlp(), tmp_path / "k.safetensors", "edgepack.demo:digits_mlp", [("hidden", 3)])


def test_an_unimportable_trusted_builder_says_how_to_make_it_importable(tmp_path):
    with pytest.raises(CheckpointError, match="No module named 'no_such_pkg'.*on PYTHONPATH"):
        save_checkpoint(digits_mlp(), tmp_path / "x.safetensors", "no_such_pkg:make")


def test_state_dict_that_does_not_match_the_builder_names_the_keys(tmp_path):
    model = digits_mlp(hidden=32)
    path = save_checkpoint(model, tmp_path / "m.safetensors", "edgepack.demo:digits_mlp", {"hidden": 16})
    with pytest.raises(CheckpointError, match=r"shape mismatch: fc1.weight \(32, 64\) \(model: \(16, 64\)\)"):
        load_checkpoint(path)
    state = {k: v for k, v in model.state_dict().items() if k != "head.bias"}
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "k.safetensors"), metadata={
        "format": "edgepack.checkpoint", "version": "2", "builder": "edgepack.demo:digits_mlp",
        "builder_kwargs": json.dumps({"hidden": 32}), "recipe": "null"})
    with pytest.raises(CheckpointError, match=r"missing: head.bias; unexpected: extra.weight"):
        load_checkpoint(tmp_path / "k.safetensors")


def test_bad_files_are_clear_errors(tmp_path, capsys):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "edgepack.checkpoint", "payload": Exploit()}, evil)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}))
    torch.save({"state_dict": {}}, plain)
    cases = {
        evil: "weights_only",
        plain: "not an edgepack checkpoint",
        tmp_path / "missing.safetensors": "does not exist",
        tmp_path: "is not a file",
    }
    (tmp_path / "empty.safetensors").write_bytes(b"")
    cases[tmp_path / "empty.safetensors"] = "not a readable checkpoint"
    (tmp_path / "random.safetensors").write_bytes(bytes(range(256)) * 4)
    cases[tmp_path / "random.safetensors"] = "not a readable checkpoint"
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    cases[other] = "without format='edgepack.checkpoint'"
    for path, message in cases.items():
        with pytest.raises(EdgepackError, match=message):
            load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def test_edgepack_registers_the_kws_ds_cnn(tmp_path):
    from edgepack.kws.models import ds_cnn

    torch.manual_seed(0)
    model = ds_cnn(channels=8, blocks=1).eval()
    path = save_checkpoint(model, tmp_path / "kws.safetensors", ds_cnn, {"channels": 8, "blocks": 1})
    x = torch.randn(2, 1, 49, 10)
    torch.testing.assert_close(load_checkpoint(path)(x), model(x))
