"""Tests for the feature-level models, their blocks and the model registry (mer.models)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mer.errors import UserError
from mer.features.pooling import masked_mean, mean_std_pool
from mer.models import MODELS, FlexibleATModel, RobustATModel, build_model, model_summary, register
from mer.models.blocks import GatedFusion, SwiGLU, TransformerBlock
from mer.models.robust_at import CLSTokenFusion
from mer.schema import FusionConfig, ModelConfig

DA, DT, NC = 12, 10, 5
NAMES = ["flexible_at", "robust_at"]
MODES = ["A", "T", "AT"]


def make_cfg(name: str, mode: str = "AT", **kw) -> ModelConfig:
    base = dict(
        name=name,
        mode=mode,
        hidden_dim=32,
        dropout=0.1,
        ffn_mult=2.0,
        fusion=FusionConfig(layers=2, heads=4, dropout=0.1, ffn_mult=2.0),
    )
    base.update(kw)
    return ModelConfig(**base)


def make_model(name: str, mode: str = "AT", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(make_cfg(name, mode, **kw), NC, audio_dim=DA, text_dim=DT)


def make_batch(b: int = 6, seed: int = 1, audio_mask=None, text_mask=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"audio": torch.randn(b, DA, generator=g), "text": torch.randn(b, DT, generator=g)}
    if audio_mask is not None:
        batch["audio_mask"] = torch.tensor(audio_mask, dtype=torch.bool)
    if text_mask is not None:
        batch["text_mask"] = torch.tensor(text_mask, dtype=torch.bool)
    return batch


# ---------------------------------------------------------------- shapes, modes, parameters


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", MODES)
def test_output_shape_and_finite_in_every_mode(name, mode):
    model = make_model(name, mode)
    batch = make_batch(6)
    if mode == "A":
        batch["text"] = torch.zeros(6, 0)  # A mode: text may be empty ...
    if mode == "T":
        del batch["audio"]  # ... T mode: audio may be missing altogether
    for train in (True, False):
        model.train(train)
        with torch.set_grad_enabled(train):
            out = model(batch)
        assert out.shape == (6, NC)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_parameters_exist_only_for_the_modalities_of_the_mode(name):
    names = {m: {n for n, _ in make_model(name, m).named_parameters()} for m in MODES}
    assert not any("text" in n for n in names["A"])
    assert not any("audio" in n for n in names["T"])
    assert any("text" in n for n in names["AT"]) and any("audio" in n for n in names["AT"])
    assert any("audio" in n for n in names["A"]) and any("text" in n for n in names["T"])
    # The text dim of the store does not change an A-mode model at all.
    torch.manual_seed(0)
    a_small = build_model(make_cfg(name, "A"), NC, audio_dim=DA, text_dim=3)
    torch.manual_seed(0)
    a_large = build_model(make_cfg(name, "A"), NC, audio_dim=DA, text_dim=300)
    assert model_summary(a_small)["total_params"] == model_summary(a_large)["total_params"]
    if name == "flexible_at":
        assert make_model(name, "A").fusion is None
        assert isinstance(make_model(name, "AT").fusion, GatedFusion)


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("masked", ["text", "audio"])
def test_features_of_a_masked_modality_do_not_change_the_logits(name, masked):
    model = make_model(name, "AT").eval()
    mask = [True, False, True, False, True, True]
    kw = {"text_mask": mask} if masked == "text" else {"audio_mask": mask}
    batch = make_batch(6, **kw)
    with torch.no_grad():
        ref = model(batch)
        changed = dict(batch)
        changed[masked] = batch[masked].clone()
        changed[masked][1] = 1e4 * torch.randn(changed[masked].shape[1])
        changed[masked][3] = float("nan")
        out = model(changed)
        unmasked = dict(batch)
        unmasked[f"{masked}_mask"] = torch.ones(6, dtype=torch.bool)
        out_unmasked = model(unmasked)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # The mask really is used: without it, samples 1 and 3 would be classified differently.
    assert not torch.allclose(out_unmasked[[1, 3]], ref[[1, 3]], atol=1e-4)
    torch.testing.assert_close(out_unmasked[[0, 2, 4, 5]], ref[[0, 2, 4, 5]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_a_masked_sample_does_not_depend_on_the_rest_of_the_batch(name):
    model = make_model(name, "AT").eval()
    batch = make_batch(
        6, audio_mask=[True, True, False, True, True, True], text_mask=[True, False, True, True, True, True]
    )
    with torch.no_grad():
        full = model(batch)
        for i in (1, 2):  # text-masked, audio-masked
            alone = model({k: v[i : i + 1] for k, v in batch.items()})
            torch.testing.assert_close(alone[0], full[i], rtol=1e-5, atol=1e-5)
        other = make_batch(6, seed=7, audio_mask=[True] * 6, text_mask=[True] * 6)
        mixed = {k: torch.cat([other[k][:3], batch[k][1:2], other[k][3:]]) for k in batch}
        torch.testing.assert_close(model(mixed)[3], full[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_both_modalities_masked_gives_finite_prior_logits(name):
    model = make_model(name, "AT").eval()
    batch = make_batch(4, audio_mask=[False, False, True, True], text_mask=[False, False, True, False])
    batch["audio"][0] = float("nan")
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(out).all()
    # Nothing about the sample is visible: every such sample gets the same logits.
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-6)
    assert not torch.allclose(out[2], out[3], atol=1e-4)


def test_missing_mask_keys_mean_all_present():
    for name in NAMES:
        model = make_model(name, "AT").eval()
        batch = make_batch(5)
        with torch.no_grad():
            a = model(batch)
            b = model(
                {
                    **batch,
                    "audio_mask": torch.ones(5, dtype=torch.bool),
                    "text_mask": torch.ones(5, dtype=torch.bool),
                }
            )
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_batch_without_the_needed_modality_names_it():
    model = make_model("robust_at", "AT")
    with pytest.raises(KeyError, match="'text'"):
        model({"audio": torch.randn(2, DA)})
    with pytest.raises(ValueError, match=r"batch\['audio'\] has shape \(2, 7\); expected \[B, 12\]"):
        model({"audio": torch.randn(2, 7), "text": torch.randn(2, DT)})


# ---------------------------------------------------------------- blocks


def test_gated_fusion_matches_a_hand_computation():
    torch.manual_seed(0)
    gfl = GatedFusion(3, 2, 4)
    a = torch.randn(4, 3)
    t = torch.randn(4, 2)
    wa, ba = gfl.wa.weight.detach().numpy(), gfl.wa.bias.detach().numpy()
    wt, bt = gfl.wt.weight.detach().numpy(), gfl.wt.bias.detach().numpy()
    wz, bz = gfl.wz.weight.detach().numpy(), gfl.wz.bias.detach().numpy()
    an, tn = a.numpy(), t.numpy()
    ha = np.tanh(an @ wa.T + ba)
    ht = np.tanh(tn @ wt.T + bt)
    z = 1 / (1 + np.exp(-(np.concatenate([an, tn], axis=1) @ wz.T + bz)))
    expected = z * ha + (1 - z) * ht
    with torch.no_grad():
        out = gfl(a, t)
        masked = gfl(
            a,
            t,
            audio_mask=torch.tensor([True, False, True, False]),
            text_mask=torch.tensor([True, True, False, False]),
        )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(masked[0].numpy(), expected[0], rtol=1e-5, atol=1e-6)  # both present
    np.testing.assert_allclose(
        masked[1].numpy(), np.tanh(bt + tn[1] @ wt.T), rtol=1e-5, atol=1e-6
    )  # text only
    np.testing.assert_allclose(
        masked[2].numpy(), np.tanh(ba + an[2] @ wa.T), rtol=1e-5, atol=1e-6
    )  # audio only
    np.testing.assert_array_equal(masked[3].numpy(), np.zeros(4, dtype=np.float32))  # neither


def test_swiglu_matches_its_formula():
    torch.manual_seed(0)
    ffn = SwiGLU(6, 10, out=3).eval()
    x = torch.randn(5, 6)
    w1, w2, w3 = ffn.w1, ffn.w2, ffn.w3
    h = F.silu(x @ w1.weight.T + w1.bias) * (x @ w3.weight.T + w3.bias)
    expected = h @ w2.weight.T + w2.bias
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), expected.detach())
    assert ffn(x).shape == (5, 3) and SwiGLU(6, 10)(x).shape == (5, 6)


def test_transformer_block_ignores_padded_keys_and_is_pre_ln():
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, dropout=0.0, ffn_mult=2.0).eval()
    x = torch.randn(2, 4, 16)
    pad = torch.tensor([[False, False, True, True], [False, False, False, False]])
    with torch.no_grad():
        ref = block(x, pad)
        x2 = x.clone()
        x2[0, 2:] = 100 * torch.randn(2, 16)
        out = block(x2, pad)
        # Hand computation of the pre-LN block for row 0, using only its two real tokens.
        xs = x[:1, :2]
        h = block.norm1(xs)
        attn, _ = block.attn(h, h, h)
        y = xs + attn
        y = y + block.ffn(block.norm2(y))
    torch.testing.assert_close(out[0, :2], ref[0, :2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref[0, :2], y[0], rtol=1e-5, atol=1e-5)


def _padded_batch():
    torch.manual_seed(0)
    lengths = [5, 3, 1, 0]
    x = torch.randn(4, 5, 3)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    x[~mask] = float("nan")  # padding values must never matter
    x[3, 0] = float("inf")
    return x, mask, lengths


def test_masked_mean_equals_the_mean_of_the_unpadded_slices():
    x, mask, lengths = _padded_batch()
    out = masked_mean(x, mask, dim=1)
    assert out.shape == (4, 3)
    for i, n in enumerate(lengths[:3]):
        torch.testing.assert_close(out[i], x[i, :n].mean(0))
    torch.testing.assert_close(out[3], torch.zeros(3))  # an all-zero mask pools to zeros
    # A 0/1 integer mask (an HF attention mask) gives the same result.
    torch.testing.assert_close(masked_mean(x, mask.long(), dim=1), out)
    # Changing the padding changes nothing.
    x2 = x.clone()
    x2[~mask] = 123.0
    torch.testing.assert_close(masked_mean(x2, mask, dim=1), out)


def test_mean_std_pool_equals_mean_and_std_of_the_unpadded_slices():
    x, mask, lengths = _padded_batch()
    x.requires_grad_(True)
    out = mean_std_pool(x, mask)
    assert out.shape == (4, 6)
    for i, n in enumerate(lengths[:2]):
        sl = x[i, :n].detach()
        torch.testing.assert_close(out[i, :3], sl.mean(0))
        torch.testing.assert_close(out[i, 3:], sl.std(0, correction=0))
    torch.testing.assert_close(out[2, :3], x[2, 0].detach())  # one frame: mean = the frame ...
    assert (out[2, 3:] <= 1e-3 + 1e-7).all()  # ... std = the sqrt(eps) floor
    torch.testing.assert_close(out[3], torch.zeros(6))  # all-zero mask -> zeros
    out.sum().backward()
    grad = x.grad
    assert torch.isfinite(grad[mask]).all()
    assert (grad[~mask] == 0).all()  # no gradient leaks into padding


def test_cls_fusion_masks_absent_tokens_out_of_attention():
    torch.manual_seed(0)
    fusion = CLSTokenFusion(16, 2, layers=2, heads=4, dropout=0.0).eval()
    tokens = torch.randn(3, 2, 16)
    present = torch.tensor([[True, True], [True, False], [False, False]])
    with torch.no_grad():
        ref = fusion(tokens, present)
        changed = tokens.clone()
        changed[1, 1] = 50 * torch.randn(16)  # an absent token, not zeroed: only attention masking hides it
        changed[2] = 50 * torch.randn(2, 16)
        torch.testing.assert_close(fusion(changed, present), ref, rtol=0, atol=1e-6)
        # Present tokens do matter, and CLS alone (no modality) is the same for every sample.
        assert not torch.allclose(fusion(changed, torch.ones(3, 2, dtype=torch.bool))[1], ref[1], atol=1e-4)
        none = fusion(torch.randn(2, 2, 16), torch.zeros(2, 2, dtype=torch.bool))
        torch.testing.assert_close(none[0], none[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(none[0], ref[2], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    model = make_model(name, "AT").train()
    batch = make_batch(8, audio_mask=[True] * 7 + [False], text_mask=[True] * 6 + [False, True])
    loss = F.cross_entropy(model(batch), torch.arange(8) % NC)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_a_toy_task_is_learned(name):
    torch.manual_seed(0)
    n, n_cls = 300, 4
    y = torch.arange(n) % n_cls
    audio = torch.randn(n_cls, DA)[y] + 1.0 * torch.randn(n, DA)
    text = torch.randn(n_cls, DT)[y] + 1.0 * torch.randn(n, DT)
    model = build_model(make_cfg(name, "AT"), n_cls, audio_dim=DA, text_dim=DT)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    batch = {"audio": audio, "text": text}
    model.train()
    initial = None
    for _ in range(100):
        loss = F.cross_entropy(model(batch), y)
        initial = loss.item() if initial is None else initial
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = F.cross_entropy(model(batch), y).item()
        acc = (model(batch).argmax(1) == y).float().mean().item()
    assert final < 0.5 * initial, (initial, final)
    assert acc > 0.9


# ---------------------------------------------------------------- registry


def test_registry_knows_both_models_and_fills_dims_from_the_store():
    assert MODELS["flexible_at"] is FlexibleATModel and MODELS["robust_at"] is RobustATModel
    cfg = make_cfg("robust_at")
    model = build_model(cfg, NC, audio_dim=DA, text_dim=DT)
    assert isinstance(model, RobustATModel)
    assert (model.cfg.audio_dim, model.cfg.text_dim) == (DA, DT)
    assert cfg.audio_dim is None  # the caller's config is not mutated
    same = build_model(dataclasses.replace(cfg, audio_dim=DA), NC, audio_dim=DA, text_dim=DT)
    assert same.cfg.audio_dim == DA
    from_cfg = build_model(dataclasses.replace(cfg, audio_dim=7, text_dim=9), NC)
    assert from_cfg.dims == {"audio": 7, "text": 9}


def test_registry_errors_are_user_errors_naming_the_problem():
    with pytest.raises(
        UserError, match=r"unknown model.name 'nope'; registered models: .*flexible_at.*robust_at"
    ):
        build_model(make_cfg("nope"), NC, audio_dim=DA, text_dim=DT)
    with pytest.raises(UserError, match=r"model.audio_dim=40 .* feature store's audio dim 12"):
        build_model(make_cfg("flexible_at", audio_dim=40), NC, audio_dim=DA, text_dim=DT)
    with pytest.raises(UserError, match=r"model.text_dim=3 .* feature store's text dim 10"):
        build_model(make_cfg("robust_at", "A", text_dim=3), NC, audio_dim=DA, text_dim=DT)
    with pytest.raises(UserError, match=r"model.mode=AT needs text features .*\(text dim is 0\)"):
        build_model(make_cfg("robust_at", "AT"), NC, audio_dim=DA, text_dim=0)
    with pytest.raises(UserError, match=r"model.mode=A needs audio features but their dim is unknown"):
        build_model(make_cfg("flexible_at", "A"), NC)
    with pytest.raises(UserError, match=r"model.hidden_dim=30 must be divisible by model.fusion.heads=4"):
        build_model(make_cfg("robust_at", hidden_dim=30), NC, audio_dim=DA, text_dim=DT)
    with pytest.raises(UserError, match=r"model.dropout must be in \[0, 1\); got 1.5"):
        build_model(make_cfg("flexible_at", dropout=1.5), NC, audio_dim=DA, text_dim=DT)
    # A text-only model is fine with an audio-less store.
    assert build_model(make_cfg("flexible_at", "T"), NC, audio_dim=0, text_dim=DT).dims == {"text": DT}


def test_register_refuses_a_second_class_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register("robust_at")(type("Other", (torch.nn.Module,), {}))


def test_model_summary_counts_parameters():
    model = make_model("flexible_at", "AT")
    total = sum(p.numel() for p in model.parameters())
    for p in model.audio_proj.parameters():
        p.requires_grad_(False)
    summary = model_summary(model)
    frozen = sum(p.numel() for p in model.audio_proj.parameters())
    assert summary["model"] == "FlexibleATModel"
    assert summary["total_params"] == total
    assert summary["trainable_params"] == total - frozen
    assert summary["by_module"]["audio_proj"] == frozen
    assert sum(summary["by_module"].values()) == total


def test_input_dropout_drops_input_features_in_training_only_and_keeps_the_checkpoint_keys():
    from mer.config import validate
    from mer.schema import ModelConfig

    def make(p):
        cfg = validate({"name": "flexible_at", "mode": "A", "hidden_dim": 8, "dropout": 0.0, "input_dropout": p,
                        "audio_dim": 500}, ModelConfig)
        torch.manual_seed(0)
        return build_model(cfg, 3)

    plain, dropped = make(0.0), make(0.5)
    assert set(plain.state_dict()) == set(dropped.state_dict())  # the same checkpoint either way
    dropped.load_state_dict(plain.state_dict())
    x = {"audio": torch.randn(4, 500), "audio_mask": torch.ones(4, dtype=torch.bool),
         "text_mask": torch.zeros(4, dtype=torch.bool)}
    plain.eval(), dropped.eval()
    torch.testing.assert_close(plain(x), dropped(x))  # evaluation: no dropout
    dropped.train()
    seen = []
    dropped.audio_proj.input_dropout.register_forward_hook(lambda m, i, o: seen.append(o))
    dropped(x)
    zeros = (seen[0] == 0).float().mean().item()
    assert 0.4 < zeros < 0.6  # about half of the input features dropped in training
