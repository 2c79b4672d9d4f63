"""Unit tests of the training loop's parts: losses, class weights, samplers, augmentation, EMA, early stopping,
schedules and parameter groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from mer.errors import UserError
from mer.schema import AugmentConfig, ClassWeightsConfig, LossConfig, SamplerConfig, SchedulerConfig
from mer.training.augmentation import augment_batch
from mer.training.early_stopping import EarlyStopping
from mer.training.ema import make_ema
from mer.training.loop import param_groups
from mer.training.losses import FocalLoss, build_loss, class_weights
from mer.training.samplers import build_sampler, sample_weights
from mer.training.schedulers import build_scheduler


def test_balanced_class_weights_match_sklearn_and_clip():
    y = np.array([0] * 60 + [1] * 30 + [3] * 10)
    w = class_weights(y, 5, ClassWeightsConfig(mode="balanced"))
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=y)
    assert torch.allclose(w[[0, 1, 3]], torch.tensor(expected, dtype=torch.float32))
    assert w[2] == 1.0 and w[4] == 1.0  # absent classes
    clipped = class_weights(y, 5, ClassWeightsConfig(mode="balanced", clip=2.0))
    assert clipped.max() == 2.0
    assert class_weights(y, 5, ClassWeightsConfig(mode="none")) is None


def test_focal_loss_with_gamma_zero_equals_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 4), torch.randint(0, 4, (16,))
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5])
    ce = nn.functional.cross_entropy(logits, target, weight=weight, label_smoothing=0.1)
    assert torch.allclose(FocalLoss(0.0, weight, 0.1)(logits, target), ce, atol=1e-6)
    # gamma > 0 down-weights easy examples: loss is smaller than CE
    assert FocalLoss(2.0)(logits, target) < nn.functional.cross_entropy(logits, target)
    assert isinstance(build_loss(LossConfig(name="focal"), None), FocalLoss)


def test_sampler_class_balanced_and_dataset_factor_proportions():
    labels = np.array([0] * 900 + [1] * 100)
    datasets = ["RAVDESS"] * 1000
    gen = torch.Generator().manual_seed(0)
    sampler = build_sampler(labels, datasets, SamplerConfig(class_balanced=True), gen)
    drawn = np.concatenate([labels[list(sampler)] for _ in range(20)])
    assert abs(drawn.mean() - 0.5) < 0.02  # classes drawn equally often

    labels = np.zeros(1000, dtype=np.int64)
    datasets = ["MELD"] * 200 + ["RAVDESS"] * 800
    sampler = build_sampler(labels, datasets, SamplerConfig(dataset_factors={"MELD": 3.0}), gen)
    picks = np.concatenate([np.array(list(sampler)) for _ in range(20)])
    share = (picks < 200).mean()
    assert abs(share - 600 / 1400) < 0.02  # MELD x3: 200*3 / (200*3 + 800)


def test_sampler_unknown_dataset_factor_is_a_user_error():
    with pytest.raises(UserError, match="dataset_factors.MELDD"):
        sample_weights(np.zeros(3, dtype=np.int64), ["MELD"] * 3, SamplerConfig(dataset_factors={"MELDD": 3.0}))


def test_modality_dropout_never_drops_both_and_zeroes_features():
    n = 2000
    batch = {"audio": torch.ones(n, 4), "text": torch.ones(n, 3), "audio_mask": torch.ones(n, dtype=torch.bool),
             "text_mask": torch.ones(n, dtype=torch.bool), "label": torch.zeros(n, dtype=torch.long)}
    out = augment_batch(batch, AugmentConfig(modality_dropout=0.4), "AT", torch.Generator().manual_seed(0))
    assert bool((out["audio_mask"] | out["text_mask"]).all())
    dropped = (~out["audio_mask"] | ~out["text_mask"]).float().mean().item()
    assert abs(dropped - 0.4) < 0.04
    assert abs((~out["audio_mask"]).float().mean().item() - 0.2) < 0.03
    assert out["audio"][~out["audio_mask"]].abs().sum() == 0
    assert out["text"][~out["text_mask"]].abs().sum() == 0
    assert batch["audio_mask"].all()  # input untouched
    same = augment_batch(batch, AugmentConfig(modality_dropout=0.4), "A", torch.Generator().manual_seed(0))
    assert same["audio_mask"].all() and same["text_mask"].all()  # single-modality modes: nothing to drop


def test_feature_noise_has_the_configured_std():
    batch = {"audio": torch.zeros(4000, 8), "text": torch.zeros(4000, 0)}
    out = augment_batch(batch, AugmentConfig(feature_noise=0.5), "AT", torch.Generator().manual_seed(0))
    assert abs(out["audio"].std().item() - 0.5) < 0.02
    assert out["text"].shape == (4000, 0)


def test_early_stopping_patience_and_min_delta():
    es = EarlyStopping(patience=2, min_delta=0.01, mode="max")
    assert es.update(0.5, 1)
    assert not es.update(0.505, 2)  # below min_delta
    assert not es.should_stop
    assert not es.update(0.4, 3)
    assert es.should_stop and es.best == 0.5 and es.best_epoch == 1
    es_min = EarlyStopping(patience=None, mode="min")
    assert es_min.update(1.0, 1) and es_min.update(0.9, 2) and not es_min.update(0.95, 3)
    assert not es_min.should_stop


def test_ema_tracks_an_exponential_average_of_weights():
    model = nn.Linear(2, 1, bias=False)
    ema = make_ema(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update_parameters(model)  # first update copies
    expected = torch.zeros_like(model.weight)
    for step in range(1, 100):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.update_parameters(model)
        decay = min(0.9, (1 + step) / (10 + step))  # warmed up: step = the updates averaged before this one
        expected = decay * expected + (1 - decay) * step
        assert torch.allclose(ema.module.weight, expected)
    assert decay == 0.9  # the configured decay once warmed up


def test_ema_decay_warms_up_so_a_short_run_moves_and_resumes_exactly():
    # Issue 10, item 25: with decay 0.999 a run of a few dozen steps kept the EMA at its random start.
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    ema = make_ema(model, decay=0.999)
    ema.update_parameters(model)  # the first update copies the weights
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    for _ in range(6):
        ema.update_parameters(model)
    moved = (ema.module.weight - start).mean().item()
    assert moved > 0.5, moved  # most of the way to the new weights (0.006 without the warm-up)

    # The warm-up step count is part of the EMA's state: a resumed EMA continues exactly.
    resumed = make_ema(model, decay=0.999)
    resumed.load_state_dict(ema.state_dict())
    assert int(resumed.n_averaged) == 7
    with torch.no_grad():
        model.weight.mul_(0.5)
    ema.update_parameters(model)
    resumed.update_parameters(model)
    assert torch.equal(ema.module.weight, resumed.module.weight)


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, SchedulerConfig(name="cosine", warmup_epochs=1, min_lr=0.1), 10, 5, 1.0)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0  # warmup over the first epoch
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:], strict=False))  # then monotone decay
    assert math.isclose(lrs[-1], 0.1, abs_tol=0.01)
    assert build_scheduler(opt, SchedulerConfig(name="none"), 10, 5, 1.0) is None


def test_param_groups_no_decay_for_norms_and_biases_and_lr_overrides():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    groups = param_groups(model, 1e-3, 0.1, {"2.": 1e-4})
    by_key = {(g["lr"], g["weight_decay"]): len(g["params"]) for g in groups}
    assert by_key == {(1e-3, 0.1): 1, (1e-3, 0.0): 3, (1e-4, 0.1): 1, (1e-4, 0.0): 1}
    with pytest.raises(UserError, match="lr_overrides.encoder"):
        param_groups(model, 1e-3, 0.1, {"encoder": 1e-5})


def test_init_from_loads_matching_weights_and_refuses_an_unrelated_checkpoint(tmp_path):
    from mer.training.checkpoint import save_checkpoint
    from mer.training.loop import init_from_checkpoint

    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3))
    save_checkpoint({"model": source.state_dict()}, tmp_path / "same.pt")
    target = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))  # a new head for another label set
    assert init_from_checkpoint(target, str(tmp_path / "same.pt")) == (2, 2)
    assert torch.equal(target[0].weight, source[0].weight)

    save_checkpoint({"model": {"1.bias": torch.zeros(2), "encoder.weight": torch.zeros(100, 100)}},
                    tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not fit this model"):
        init_from_checkpoint(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), str(tmp_path / "other.pt"))
