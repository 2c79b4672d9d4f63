"""mer.features.hf_encoders and mer.data.context on tiny random WavLM / RoBERTa encoders saved to a temp folder:
loading (and the offline error), frame masks, layer choice, pooling, batching invariance, dialogue context."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_hf import make_tiny_roberta, make_tiny_wavlm

from mer.data.context import build_context, context_parts, truncate_left
from mer.data.hf_inputs import pad_token_ids, prepare_audio
from mer.errors import UserError
from mer.features.hf_encoders import (
    audio_output_lengths,
    check_layer,
    encode_audio,
    encode_text,
    encoder_fingerprint,
    frame_mask_from_waveform_mask,
    load_encoder,
    min_audio_samples,
    parse_layer,
    pool_audio,
    pool_text,
    pooled_dim,
    select_layer,
    text_max_length,
)
from mer.features.pooling import masked_mean, mean_std_pool


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf_models")
    return {
        "group": make_tiny_wavlm(root / "wavlm_group", feat_extract_norm="group"),
        "layer": make_tiny_wavlm(root / "wavlm_layer", feat_extract_norm="layer"),
        "roberta": make_tiny_roberta(root / "roberta"),
    }


@pytest.fixture(scope="session")
def wavlm(model_dirs):
    return load_encoder(model_dirs["group"], "audio")


@pytest.fixture(scope="session")
def roberta(model_dirs):
    return load_encoder(model_dirs["roberta"], "text")


def clips(*seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = [np.arange(int(s * 16000)) / 16000 for s in seconds]
    return [(0.3 * np.sin(2 * np.pi * (150 + 40 * i) * x) + 0.05 * rng.standard_normal(x.size)).astype(np.float32)
            for i, x in enumerate(t)]


def audio_vectors(model, fe, waves, pooling="mean", layer="last") -> torch.Tensor:
    with torch.inference_mode():
        enc = prepare_audio(fe, waves)
        hidden, mask = encode_audio(model, enc["input_values"], enc["attention_mask"], layer)
        return pool_audio(hidden, mask, pooling)


def text_vectors(model, tok, texts, pooling="cls") -> torch.Tensor:
    with torch.inference_mode():
        enc = pad_token_ids(tok, truncate_left(tok, texts, text_max_length(model, tok)))
        return pool_text(encode_text(model, enc["input_ids"], enc["attention_mask"]), enc["attention_mask"], pooling)


# -- loading ---------------------------------------------------------------------------------------------------
def test_load_encoder_from_a_folder_gives_eval_models_and_their_processors(wavlm, roberta, model_dirs):
    model, fe = wavlm
    tmodel, tok = roberta
    assert type(model).__name__ == "WavLMModel" and not model.training
    assert type(fe).__name__ == "Wav2Vec2FeatureExtractor" and fe.sampling_rate == 16000
    assert type(tmodel).__name__ == "RobertaModel" and not tmodel.training
    assert tok.sep_token == "</s>" and text_max_length(tmodel, tok) == 64
    assert pooled_dim(model, "mean") == 32 and pooled_dim(model, "mean_std") == 64
    fp = encoder_fingerprint(model)
    assert fp.startswith(str(model_dirs["group"].resolve()) + "@sha256:") and len(fp.split(":")[-1]) == 64
    assert encoder_fingerprint(load_encoder(model_dirs["group"], "audio")[0]) == fp  # stable across loads
    other = load_encoder(model_dirs["layer"], "audio")[0]
    assert fp.split("@")[1] != encoder_fingerprint(other).split("@")[1]  # the config differs: so does the hash


def test_a_hub_name_that_cannot_be_loaded_offline_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        load_encoder("mer-tests/no-such-wavlm", "audio")
    msg = str(err.value)
    assert "'mer-tests/no-such-wavlm'" in msg and "HF_HUB_OFFLINE" in msg and "save_pretrained" in msg
    assert "AutoFeatureExtractor" in msg and "\n" not in msg
    with pytest.raises(UserError, match="AutoTokenizer"):
        load_encoder("mer-tests/no-such-roberta", "text")


def test_a_bad_local_folder_is_a_user_error_naming_it(tmp_path, model_dirs):
    with pytest.raises(UserError, match="folder not found"):
        load_encoder(str(tmp_path / "nope" / "deeper" / "model"), "audio")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: cannot load an audio encoder from this folder"):
        load_encoder(tmp_path / "empty", "audio")
    with pytest.raises(UserError, match="not a waveform encoder"):
        load_encoder(model_dirs["roberta"], "audio")  # a text model where audio is expected


# -- frames and masks ------------------------------------------------------------------------------------------
def test_frame_mask_has_the_encoders_frame_count_for_every_row(wavlm):
    model, fe = wavlm
    waves = clips(0.5, 1.23, 0.0137, 2.0)  # 0.0137 s = 219 samples: just under the receptive field
    enc = prepare_audio(fe, waves)
    mask = frame_mask_from_waveform_mask(model, enc["attention_mask"])
    assert mask.dtype == torch.bool and mask.shape == (4, 100)  # 32000 samples, stride 320 -> 100 frames
    for b, w in enumerate(waves):
        n = w.size
        if n >= min_audio_samples(model):
            with torch.inference_mode():
                alone = model(torch.from_numpy(w)[None]).last_hidden_state
            expected = alone.shape[1]
        else:
            expected = 0
        assert int(mask[b].sum()) == expected == int(audio_output_lengths(model, n))
        assert mask[b, :expected].all() and not mask[b, expected:].any()  # a prefix of real frames
    hf_mask = model._get_feature_vector_attention_mask(100, enc["attention_mask"][[0, 1, 3]])
    assert torch.equal(mask[[0, 1, 3]], hf_mask)  # the same frames HF's own attention uses


def test_min_audio_samples_is_the_receptive_field(wavlm):
    model, _ = wavlm
    n = min_audio_samples(model)
    assert n == 220
    assert int(audio_output_lengths(model, n)) == 1 and int(audio_output_lengths(model, n - 1)) == 0
    enc = prepare_audio(wavlm[1], clips(0.0137, 1.0))
    with pytest.raises(ValueError, match="219 samples"):
        encode_audio(model, enc["input_values"], enc["attention_mask"])


def test_feature_extractor_normalises_each_clip_over_its_own_samples(wavlm):
    _, fe = wavlm
    short, long = clips(0.4, 1.7, seed=3)
    alone = prepare_audio(fe, [short])["input_values"][0]
    batched = prepare_audio(fe, [long, short])
    n = short.size
    torch.testing.assert_close(batched["input_values"][1, :n], alone, atol=1e-6, rtol=0)
    assert batched["input_values"][1, n:].abs().max() == 0 and batched["attention_mask"][1].sum() == n
    assert abs(float(alone.mean())) < 1e-4 and abs(float(alone.std()) - 1) < 1e-3


# -- the key property: batching never changes a clip's pooled vector -----------------------------------------------
@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("pooling, layer", [("mean", "last"), ("mean_std", "mean"), ("mean_std", 1)])
def test_audio_vector_does_not_change_when_batched_with_a_longer_clip(model_dirs, norm, pooling, layer):
    model, fe = load_encoder(model_dirs[norm], "audio")
    short, long, mid = clips(0.61, 2.3, 1.1, seed=1)
    alone = audio_vectors(model, fe, [short], pooling, layer)[0]
    batched = audio_vectors(model, fe, [long, short, mid], pooling, layer)
    assert batched.shape == (3, 64 if pooling == "mean_std" else 32)
    torch.testing.assert_close(batched[1], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[2], audio_vectors(model, fe, [mid], pooling, layer)[0], atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_without_clipwise_conv_a_group_norm_encoder_leaks_padding(wavlm):
    """Why encode_audio runs a GroupNorm conv stack clip by clip: the plain padded forward pass differs."""
    model, fe = wavlm
    short, long = clips(0.61, 2.3, seed=1)
    alone = audio_vectors(model, fe, [short])[0]
    enc = prepare_audio(fe, [long, short])
    with torch.inference_mode():
        naive = model(enc["input_values"], attention_mask=enc["attention_mask"]).last_hidden_state
        vec = masked_mean(naive, frame_mask_from_waveform_mask(model, enc["attention_mask"]))[1]
    assert (vec - alone).abs().max() > 1e-3
    assert model.feature_extractor.forward.__func__ is type(model.feature_extractor).forward  # restored


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_vector_does_not_change_when_batched_with_a_longer_text(roberta, pooling):
    model, tok = roberta
    short = "i am so happy"
    long = "this is terrible and i am angry, why did you do that to me? oh no i am scared of the dark"
    alone = text_vectors(model, tok, [short], pooling)[0]
    batched = text_vectors(model, tok, [long, short], pooling)
    assert batched.shape == (2, 32)
    torch.testing.assert_close(batched[1], alone, atol=1e-5, rtol=0)


def test_text_pooling_matches_blocks_pooling(roberta):
    model, tok = roberta
    enc = pad_token_ids(tok, truncate_left(tok, ["okay let us go", "the cat sat on the mat and slept"], 64))
    assert enc["attention_mask"][0, -1] == 0 and enc["attention_mask"][0, 0] == 1  # right padding
    with torch.inference_mode():
        hidden = encode_text(model, enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(pool_text(hidden, enc["attention_mask"], "cls"), hidden[:, 0])
    torch.testing.assert_close(pool_text(hidden, enc["attention_mask"], "mean"),
                               masked_mean(hidden, enc["attention_mask"], dim=1))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    h = torch.randn(2, 3, 4)
    torch.testing.assert_close(pool_audio(h, mask, "mean_std"), mean_std_pool(h, mask))
    with pytest.raises(ValueError, match="audio pooling"):
        pool_audio(h, mask, "max")


# -- layer choice -----------------------------------------------------------------------------------------------
def test_layer_choice_last_index_and_mean_differ_and_keep_the_shape(wavlm):
    model, fe = wavlm
    enc = prepare_audio(fe, clips(1.0, 0.5))
    with torch.inference_mode():
        out = model(enc["input_values"][:1], output_hidden_states=True)
        last, _ = encode_audio(model, enc["input_values"], enc["attention_mask"], "last")
        first, _ = encode_audio(model, enc["input_values"], enc["attention_mask"], 0)
        mean, _ = encode_audio(model, enc["input_values"], enc["attention_mask"], "mean")
        two, _ = encode_audio(model, enc["input_values"], enc["attention_mask"], 2)
    assert last.shape == first.shape == mean.shape == (2, 50, 32)
    assert len(out.hidden_states) == 3  # input of layer 1, outputs of layers 1 and 2
    torch.testing.assert_close(two, last)  # index num_layers is the final output
    torch.testing.assert_close(first[:1], out.hidden_states[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mean[:1], torch.stack(out.hidden_states).mean(0), atol=1e-5, rtol=0)
    assert (last - first).abs().max() > 1e-2 and (last - mean).abs().max() > 1e-2
    hs = tuple(torch.full((1, 2, 3), float(i)) for i in range(3))
    assert select_layer(hs, "last").unique().item() == 2 and select_layer(hs, -3).unique().item() == 0
    assert select_layer(hs, "mean").unique().item() == 1
    with pytest.raises(UserError, match="layer 3 does not exist"):
        select_layer(hs, 3)
    with pytest.raises(UserError, match=r"layer 5 does not exist: .* has 2 layers .*'last', 'mean' or 'weighted'"):
        check_layer(model, 5)
    assert parse_layer("last") == "last" and parse_layer("-1") == -1 and parse_layer("2") == 2
    with pytest.raises(UserError, match="expected 'last', 'mean' or a layer index"):
        parse_layer("top")


# -- dialogue context -------------------------------------------------------------------------------------------
def dialogue_rows() -> list[dict]:
    def conv(i, dia, turn, spk, text):
        return {"id": f"MELD/test/dia{dia}_utt{turn}", "dataset": "MELD", "dialogue_id": f"MELD/test/dia{dia}",
                "turn": turn, "speaker": f"MELD/{spk}", "text": text, "domain": "conversational"}

    return [
        conv(0, 1, 2, "Ross", "We were on a break!"),  # manifest order is not turn order
        conv(1, 1, 0, "Rachel", "Hi."),
        conv(2, 2, 0, "Joey", "How you doin'?"),
        conv(3, 1, 1, "Ross", "Hello."),
        {"id": "RAVDESS/Actor_01/a", "dataset": "RAVDESS", "dialogue_id": None, "turn": None,
         "speaker": "RAVDESS/01", "text": "Kids are talking by the door.", "domain": "acted"},
        conv(5, 1, 3, "Rachel", ""),
        conv(6, 1, 4, "Monica", "Guys!"),
    ]


def test_context_k0_leaves_every_text_unchanged():
    rows = dialogue_rows()
    assert build_context(rows, 0) == [r["text"] for r in rows]


def test_context_k1_and_k3_take_earlier_turns_of_the_same_dialogue_with_speakers():
    rows = dialogue_rows()
    k1 = build_context(rows, 1)
    assert k1[0] == "Ross: Hello. </s> We were on a break!"
    assert k1[1] == "Hi." and k1[2] == "How you doin'?"  # first turns: nothing before them
    assert k1[3] == "Rachel: Hi. </s> Hello."
    assert k1[4] == "Kids are talking by the door."  # acted: unchanged
    assert k1[5] == "Ross: We were on a break! </s> "  # an empty current turn keeps its context
    assert k1[6] == "Guys!"  # the previous turn (3) is empty: nothing to show
    k3 = build_context(rows, 3)
    assert k3[6] == "Ross: Hello. </s> Ross: We were on a break! </s> Guys!"
    assert k3[0] == "Rachel: Hi. </s> Ross: Hello. </s> We were on a break!"
    assert "Joey" not in " ".join(k3[:2] + k3[3:])  # dialogue 2 never leaks into dialogue 1
    assert context_parts(rows, 3, sep=" | ")[0] == ("Rachel: Hi. | Ross: Hello.", "We were on a break!")
    with pytest.raises(ValueError, match="k must be >= 0"):
        build_context(rows, -1)


def test_truncate_left_drops_old_context_and_keeps_the_current_turn(roberta):
    _, tok = roberta
    rows = [{"id": f"d/{t}", "dataset": "D", "dialogue_id": "d", "turn": t, "speaker": f"D/s{t % 2}",
             "text": f"i am so happy to see you again number {t}"} for t in range(8)]
    rows.append({"id": "d/8", "dataset": "D", "dialogue_id": "d", "turn": 8, "speaker": "D/s0",
                 "text": "why did you do that to me"})
    parts = context_parts(rows, 6)
    texts = [f"{c} </s> {t}" if c else t for c, t in parts]
    ids = truncate_left(tok, texts, 24, [t for _, t in parts])
    assert all(len(x) <= 24 for x in ids)
    full = tok(texts[-1]).input_ids
    assert len(full) > 24  # the context really was too long
    decoded = tok.decode(ids[-1], skip_special_tokens=False)
    assert decoded.startswith("<s>") and decoded.endswith("</s> why did you do that to me</s>")
    assert ids[-1][1:] == full[-23:]  # the most recent tokens, oldest cut first
    # a current turn longer than the limit by itself: no context, and cut on the right as without context
    long_turn = "this is terrible and i am angry " * 6
    ids = truncate_left(tok, [f"s1: hello </s> {long_turn}"], 24, [long_turn])
    assert ids[0] == tok(long_turn, truncation=True, max_length=24).input_ids
    with pytest.raises(ValueError, match="not the end of its text"):
        truncate_left(tok, ["a b c"], 24, ["x"])
