"""CI's short Soft Weight-Sharing run on MNIST (LeNet-300-100, a seeded subset): the prior must
prune and quantize to a stated compression rate at a stated error, through the real command."""

import json

import pytest
import torch

from edgepack.cli import main

# Measured (seed 0, 126 retraining steps; the paper's result needs thousands): with the prior rate 110x,
# 2.2 % non-zero, error 5.2 % -> 34 %; the same run with tau 0 (the prior doing nothing) gives 47x,
# 8.3 % non-zero, 58 % error, failing every bound below.
MIN_RATE = 80.0
MAX_NONZERO_PERCENT = 4.0
MAX_ERROR_BEFORE = 10.0
MAX_ERROR_AFTER = 45.0


def test_quick_sws_reaches_the_stated_rate_and_error(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        # the prior's flags at --quick's values: the same run, and they must reach the prior
        assert main(["papers", "sws", "--model", "lenet-300-100", "--quick", "--work", str(tmp_path),
                     "--lr-means", "1e-4", "--gamma-zero", "5000,2"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "paper" in printed and "compression rate" in printed and "64x" in printed
    result = json.loads((tmp_path / "sws-lenet-300-100.json").read_text())
    assert result["retrain_options"]["prior_lrs"] == {"means": 1e-4}
    assert result["retrain_options"]["gamma_zero"] == [5000.0, 2.0] and result["final_epochs"] == 0
    assert result["error_before"] <= MAX_ERROR_BEFORE
    assert result["rate"] >= MIN_RATE and result["nonzero_percent"] <= MAX_NONZERO_PERCENT
    assert result["error_after"] <= MAX_ERROR_AFTER
    codebook = result["codebook"]
    assert codebook[0] == 0.0 and 2 <= len(codebook) <= 17
    layer_bits = sum(layer["total_bits"] for layer in result["size"]["layers"])
    assert result["compressed_bytes"] * 8 == layer_bits
    assert result["exported_bytes"] is not None, result["exported"]
    assert result["exported_bytes"] < result["dense_bytes"] / 10
    assert (tmp_path / "sws-lenet-300-100.png").stat().st_size > 0 and result["plot"].endswith(".png")


def test_bad_prior_and_final_phase_settings_are_refused_by_name(tmp_path, capsys):
    for argv, message in ((["--gamma-zero", "1,2"], "alpha > 1"), (["--gamma-others", "250"], "ALPHA,BETA"),
                          (["--final-epochs", "-1"], "integer >= 0")):
        with pytest.raises(SystemExit) as stopped:
            main(["papers", "sws", "--work", str(tmp_path), *argv])
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err
    assert main(["papers", "sws", "--work", str(tmp_path), "--final-tau", "-1"]) == 2
    assert "--final-tau must be a finite number >= 0" in capsys.readouterr().err
    assert main(["papers", "sws", "--work", str(tmp_path), "--pretrain", "caffe", "--pretrain-epochs", "3"]) == 2
    assert "--pretrain-epochs is for --pretrain adam" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["papers", "sws", "--work", str(tmp_path), "--pretrain", "sgd"])
    assert stopped.value.code == 2 and "--pretrain" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_caffe_solver_steps_as_sgd_with_momentum_decay_and_the_inv_rate():
    """Seven iterations of lenet.train_caffe_solver on 200 images (batches of 64, so a second pass starts)
    equal the update written out by hand: v = 0.9 v + (g + 5e-4 w), w -= rate(it) v, rate(it) = 0.01 (1 +
    1e-4 it)^-0.75 (Caffe's inv policy), batches in the seeded order."""
    from torch import nn

    from edgepack.benchmarks.lenet import train_caffe_solver

    torch.manual_seed(0)
    images, labels = torch.randn(200, 1, 28, 28), torch.randint(0, 10, (200,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    reference = [p.detach().clone() for p in model.parameters()]
    train_caffe_solver(model, images, labels, seed=3, iterations=7)

    velocity = [torch.zeros_like(p) for p in reference]
    generator = torch.Generator().manual_seed(3)
    batches = [*torch.randperm(200, generator=generator).split(64), *torch.randperm(200, generator=generator).split(64)]
    for iteration, batch in enumerate(batches[:7]):
        weights = [p.clone().requires_grad_() for p in reference]
        logits = images[batch].flatten(1) @ weights[0].T + weights[1]
        grads = torch.autograd.grad(nn.functional.cross_entropy(logits, labels[batch]), weights)
        rate = 0.01 * (1 + 1e-4 * iteration) ** -0.75
        for k, (w, g) in enumerate(zip(reference, grads)):
            velocity[k] = 0.9 * velocity[k] + g + 5e-4 * w if iteration else g + 5e-4 * w
            reference[k] = w - rate * velocity[k]
    for trained, want in zip(model.parameters(), reference):
        torch.testing.assert_close(trained.detach(), want, rtol=1e-5, atol=1e-6)
