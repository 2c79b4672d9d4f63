"""Frame-level models over log-mel: attentive statistics pooling, masked BatchNorm, SmallCNN, ResNet18Mel,
ECAPA-TDNN (shapes, padding invariance, training)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mer.models.cnn_mel import BasicBlock, ResNet18Mel, SmallCNN, TimePool
from mer.models.ecapa import ECAPATDNN, SERes2NetBlock
from mer.models.frame_blocks import MaskedBatchNorm, read_waveform
from mer.models.pooling import AttentiveStatsPool, masked_softmax

FRONT = {"n_mels": 32}  # a small front end keeps the tests fast


def tiny_models(n_classes=3):
    torch.manual_seed(0)
    return [
        SmallCNN(n_classes, channels=(4, 8, 8), dropout=0.0, frontend=FRONT),
        ResNet18Mel(n_classes, base_width=4, frontend=FRONT),
        ECAPATDNN(
            n_classes,
            channels=(16, 16, 16, 16, 48),
            res2net_scale=4,
            se_channels=4,
            attention_channels=8,
            embedding_dim=12,
            frontend=FRONT,
        ),
        SmallCNN(n_classes, channels=(4, 8), dropout=0.0, pooling="asp", frontend=FRONT, freq_pooling="flatten"),
        ResNet18Mel(n_classes, base_width=4, pooling="asp", frontend=FRONT),
        SmallCNN(n_classes, channels=(4, 8), dropout=0.0, pooling="mean_std", frontend=FRONT, freq_pooling="flatten"),
        ResNet18Mel(n_classes, base_width=4, pooling="mean_std", frontend=FRONT, freq_pooling="flatten"),
    ]


def batch_of(lengths, pad_value=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    wave = torch.full((len(lengths), int(lengths.max()) + 320), pad_value)
    for i, n in enumerate(lengths.tolist()):
        wave[i, :n] = torch.randn(n, generator=g) * 0.1
    return {"audio": wave, "audio_lengths": lengths}


# -- pooling -------------------------------------------------------------------------------------------------
def test_attentive_stats_pool_formula_and_masks():
    torch.manual_seed(0)
    pool = AttentiveStatsPool(6, attention_dim=5)
    x = torch.randn(2, 9, 6)
    mask = torch.tensor([[True] * 9, [True] * 4 + [False] * 5])
    x[1, 4:] = float("nan")  # padding never reaches the output
    out, alpha = pool(x, mask, return_weights=True)
    assert out.shape == (2, 12) and torch.isfinite(out).all()
    assert torch.all(alpha[1, 4:] == 0)
    torch.testing.assert_close(alpha.sum(1), torch.ones(2, 1))
    for b, n in ((0, 9), (1, 4)):
        h = x[b, :n]
        e = pool.score(torch.tanh(pool.attention(h)))[:, 0]  # e_t = v^T tanh(W h_t + b)
        a = torch.softmax(e, 0).unsqueeze(1)
        mu = (a * h).sum(0)
        sigma = ((a * h * h).sum(0) - mu * mu).clamp_min(1e-6).sqrt()
        torch.testing.assert_close(out[b], torch.cat([mu, sigma]))
        torch.testing.assert_close(pool(h[None])[0], out[b])  # the clip alone
    empty = pool(x, torch.zeros(2, 9, dtype=torch.bool))
    assert torch.all(empty == 0)
    assert torch.all(masked_softmax(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.bool)) == 0)


def test_channel_wise_global_context_pool():
    pool = AttentiveStatsPool(4, 3, channel_wise=True, global_context=True, channels_first=True)
    x = torch.randn(2, 4, 7)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    out, alpha = pool(x, mask, return_weights=True)
    assert out.shape == (2, 8) and alpha.shape == (2, 7, 4)
    torch.testing.assert_close(pool(x[1:, :, :3])[0], out[1])


def test_time_pool_asp_weights_real_frames_only_and_keeps_old_checkpoints():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 6)  # [B, C, F', T'] conv maps
    lengths = torch.tensor([6, 2])
    x[1, :, :, 2:] = float("nan")  # padding frames never reach the output
    pool = TimePool(3, 4, "asp", "flatten", attention_dim=5)
    out = pool(x, lengths)
    assert out.shape == (2, pool.out_dim) == (2, 24) and torch.isfinite(out).all()
    frames = x.flatten(1, 2).transpose(1, 2)  # [B, T', C * F']
    for b, n in ((0, 6), (1, 2)):
        torch.testing.assert_close(out[b], pool.asp(frames[b : b + 1, :n])[0])  # the clip's real frames alone
    assert TimePool(3, 4, "asp").out_dim == 6 and TimePool(3, 4, "mean", "flatten").out_dim == 12
    # mean / mean_std pooling has no parameters: checkpoints saved before TimePool existed still load
    assert not list(TimePool(3, 4, "mean_std", "flatten").parameters())
    with pytest.raises(ValueError, match="pooling='max' is not one of mean, mean_std, asp"):
        SmallCNN(3, channels=(4,), pooling="max", frontend=FRONT)
    with pytest.raises(ValueError, match="freq_pooling='sum' is not one of mean, flatten"):
        ResNet18Mel(3, base_width=4, freq_pooling="sum", frontend=FRONT)


def test_masked_batchnorm_statistics_over_real_frames():
    torch.manual_seed(0)
    bn, ref = MaskedBatchNorm(3, momentum=0.2), nn.BatchNorm1d(3, momentum=0.2)
    x = torch.randn(2, 3, 10)
    mask = torch.tensor([[True] * 10, [True] * 6 + [False] * 4])
    x[1, :, 6:] = 100.0
    out = bn(x, mask)
    real = torch.cat([x[0], x[1, :, :6]], dim=1).unsqueeze(0)  # [1, 3, 16]: the real frames only
    expect = ref(real)[0]
    torch.testing.assert_close(torch.cat([out[0], out[1, :, :6]], dim=1), expect)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    x4 = torch.randn(2, 3, 5, 10)
    out4 = bn(x4, mask)
    real4 = torch.cat([x4[0], x4[1, :, :, :6]], dim=2)  # [3, 5, 16]
    mean = real4.mean((1, 2)).view(1, 3, 1, 1)
    var = real4.var((1, 2), unbiased=False).view(1, 3, 1, 1)
    torch.testing.assert_close(out4[:, :, :, :6], ((x4 - mean) / (var + bn.eps).sqrt())[:, :, :, :6])
    bn.eval()
    torch.testing.assert_close(
        bn(x4, mask),
        nn.functional.batch_norm(x4, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps),
    )


def test_masked_batchnorm_gradients_are_those_of_batchnorm_over_the_real_frames():
    torch.manual_seed(1)
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4, [True] * 9])
    for full in (False, True):  # padding (the masked statistics) and none (torch's fused BatchNorm)
        m = torch.ones_like(mask) if full else mask
        x = (torch.randn(3, 4, 6, 9) * 2 + 1).requires_grad_()
        w = torch.randn(3, 4, 6, 9)
        bn = MaskedBatchNorm(4)
        nn.init.normal_(bn.weight)
        nn.init.normal_(bn.bias)
        out = bn(x, m)
        (out * w)[..., :5].sum().backward()  # the frames every clip has, plus clip 0 and 2's own below
        gx, gw, gb = x.grad.clone(), bn.weight.grad.clone(), bn.bias.grad.clone()
        ref = nn.BatchNorm2d(4)
        ref.load_state_dict({k: v for k, v in bn.state_dict().items() if k in ref.state_dict()} | {
            "running_mean": torch.zeros(4), "running_var": torch.ones(4), "num_batches_tracked": torch.tensor(0)})
        x2 = x.detach().clone().requires_grad_()
        real = torch.cat([x2[i, :, :, : int(m[i].sum())] for i in range(3)], dim=-1).unsqueeze(0)  # [1, C, F, 23]
        out2 = ref(real)[0]
        w2 = torch.cat([w[i, :, :, : int(m[i].sum())] for i in range(3)], dim=-1)
        keep = torch.cat([torch.arange(int(m[i].sum())) < 5 for i in range(3)])
        (out2 * w2)[..., keep].sum().backward()
        torch.testing.assert_close(gx * m.view(3, 1, 1, 9), x2.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(gw, ref.weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(gb, ref.bias.grad, atol=1e-5, rtol=1e-4)


# -- models --------------------------------------------------------------------------------------------------
def test_shapes_and_padding_never_changes_a_clip_in_eval():
    batch = batch_of([16000, 7000, 3300, 1700], pad_value=float("nan"))
    for model in tiny_models():
        model.eval()
        with torch.no_grad():
            logits = model(batch)
            assert logits.shape == (4, 3) and torch.isfinite(logits).all(), type(model).__name__
            for i, n in enumerate(batch["audio_lengths"].tolist()):
                alone = model({"audio": batch["audio"][i : i + 1, :n], "audio_lengths": torch.tensor([n])})
                torch.testing.assert_close(alone[0], logits[i], rtol=0, atol=1e-5, msg=type(model).__name__)


def test_training_mode_statistics_ignore_padding():
    """With dropout off, extra padding of the whole batch leaves the training-mode output unchanged (BatchNorm
    statistics over real frames)."""
    short = batch_of([8000, 5000, 3000])
    longer = {
        "audio": nn.functional.pad(short["audio"], (0, 4000), value=0.3),
        "audio_lengths": short["audio_lengths"],
    }
    for model in tiny_models():
        model.train()
        a, b = model(short), model(longer)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=type(model).__name__)


def test_spec_augment_hook_only_in_training():
    model = tiny_models()[0]
    calls = []

    def hook(feats, frame_lengths):
        calls.append(feats.shape)
        return torch.zeros_like(feats)

    model.spec_augment = hook
    batch = batch_of([4000, 3000])
    model.eval()
    with torch.no_grad():
        before = model(batch)
    assert calls == []
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model(batch)
    assert len(calls) == 1 and calls[0][1] == 32
    model.load_state_dict(state)  # the training pass moved the BatchNorm running statistics
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), before, rtol=0, atol=1e-6)
    assert "spec_augment" not in "".join(model.state_dict())


def test_loss_falls_in_a_few_steps():
    torch.manual_seed(0)
    batch = batch_of([6000, 5000, 4000, 6000, 3000, 4500], seed=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for model in tiny_models():
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        losses = []
        for _ in range(12):
            loss = nn.functional.cross_entropy(model(batch), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.7 * losses[0], (type(model).__name__, losses)


def test_a_one_clip_training_batch_works():
    for model in tiny_models():
        model.train()
        out = model(batch_of([3000]))
        out.sum().backward()
        assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_resnet18_is_the_torchvision_layout():
    model = ResNet18Mel(7)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    assert [s[0].conv1.out_channels for s in model.stages] == [64, 128, 256, 512]
    assert [s[0].stride for s in model.stages] == [1, 2, 2, 2]
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    # torchvision's resnet18 has 11,689,512 parameters (3-channel stem, 1000 classes): with a 1-channel stem
    # (-2 * 64 * 49) and 7 classes (-(513 * 1000) + 513 * 7):
    assert sum(p.numel() for p in model.parameters()) == 11_689_512 - 2 * 64 * 49 - 513 * 1000 + 513 * 7


def test_ecapa_layout_and_options():
    model = ECAPATDNN(4)
    assert model.block0.conv.kernel_size == (5,) and model.block0.conv.out_channels == 512
    se = [m for m in model.modules() if isinstance(m, SERes2NetBlock)]
    assert [b.res2net.blocks[0].conv.dilation[0] for b in se] == [2, 3, 4]
    assert [b.res2net.blocks[0].conv.kernel_size[0] for b in se] == [3, 3, 3]
    assert all(len(b.res2net.blocks) == 7 and b.se.fc1.out_channels == 128 for b in se)
    assert model.mfa.conv.in_channels == 3 * 512 and model.mfa.conv.out_channels == 1536
    assert model.embedding.out_features == 192 and model.pool.out_dim == 2 * 1536
    with pytest.raises(ValueError):
        ECAPATDNN(4, channels=(30, 30, 30, 30, 90), res2net_scale=8)  # 30 not divisible by 8
    with pytest.raises(ValueError):
        ECAPATDNN(4, channels=(16, 16, 48), kernels=(5, 3, 3, 1))


def test_read_waveform_from_end_to_end_batches():
    wave = torch.randn(2, 50)
    w, n = read_waveform(
        {"input_values": wave, "audio_attention_mask": (torch.arange(50) < torch.tensor([[50], [20]]))}
    )
    assert w is wave and n.tolist() == [50, 20]
    with pytest.raises(KeyError):
        read_waveform({"label": torch.zeros(2)})


def test_small_cnn_flatten_keeps_the_frequency_bins_apart():
    model = tiny_models()[-2]
    assert model.head.in_features == 2 * 8 * 8  # mean+std of 8 channels x 8 bins (32 mels after two 2x2 pools)
    with pytest.raises(ValueError, match="freq_pooling"):
        SmallCNN(3, frontend=FRONT, freq_pooling="max")
    resnet = tiny_models()[-1]  # 32 mels: stem /2 -> 16, max-pool -> 8, three stride-2 stages -> 1
    assert resnet.head.in_features == 2 * 32 * 1
