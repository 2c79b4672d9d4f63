"""A tiny randomly initialised Whisper *speech recognizer* saved to a folder (tests, demos: no network, no hub).

`make_tiny_whisper_asr(dir)` writes what `WhisperForConditionalGeneration`, `WhisperFeatureExtractor` and
`WhisperTokenizer` load like a hub checkpoint (e.g. openai/whisper-tiny), built offline:

- the tokenizer: a byte-level BPE trained with the `tokenizers` library on a few sentences, followed by Whisper's
  special tokens in Whisper's order (`<|endoftext|>`, `<|startoftranscript|>`, one token per language,
  `<|translate|>`, `<|transcribe|>`, `<|startoflm|>`, `<|startofprev|>`, `<|nocaptions|>`, `<|notimestamps|>`)
  and the timestamp tokens `<|0.00|>` ... of one window;
- a generation config as multilingual Whisper checkpoints have (`lang_to_id`, `task_to_id`,
  `no_timestamps_token_id`, ...), so `generate(language=..., task="transcribe")`, language detection and
  long-form generation (clips longer than the window, with timestamps) all run;
- the weights: seeded, so the same call gives the same model (another `seed`, another model). The model is
  untrained: `suppress_tokens` lets it emit only whole words of the training sentences (and the end token, not as
  its first token), and those words' (tied) output embeddings are scaled up and the timestamp tokens' down, so its
  transcripts are short readable word strings rather than stray bytes or timestamps.

The window is `chunk_s` seconds (real checkpoints: 30 s): 100 log-mel frames (50 encoder positions) per second.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mer.features.hf_encoders import quiet_transformers
from mer.models.tiny_encoders import CORPUS

WHISPER_SPECIALS_AFTER_LANGUAGES = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                                    "<|nocaptions|>", "<|notimestamps|>"]


def train_byte_bpe(corpus: list[str], vocab_size: int = 300) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE (GPT-2 / Whisper style) trained on `corpus`: its vocabulary and merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    return tok.get_vocab(), merges


def make_tiny_whisper_asr(path: str | Path, d_model: int = 32, layers: int = 2, chunk_s: int = 1,
                          max_target_positions: int = 32, seed: int = 0) -> Path:
    """A tiny WhisperForConditionalGeneration (`d_model` wide, `layers` encoder layers, 1 decoder layer), its
    generation config, tokenizer and feature extractor (`chunk_s`-second window) in `path`."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    path = Path(path)
    bpe, merges = train_byte_bpe(CORPUS)
    languages = [f"<|{code}|>" for code in LANGUAGES]
    specials = ["<|endoftext|>", "<|startoftranscript|>", *languages, *WHISPER_SPECIALS_AFTER_LANGUAGES]
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(50 * chunk_s + 1)]
    vocab = dict(bpe)
    for i, token in enumerate(specials + stamps):
        vocab[token] = len(bpe) + i
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, extra_special_tokens=specials[1:],
                                 model_max_length=max_target_positions)
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    words = {i for t, i in bpe.items() if t.startswith("\u0120") and t[1:].isalpha() and len(t) > 2}
    suppress = [i for i in range(len(vocab)) if i < len(bpe) and i not in words]
    suppress += [vocab[t] for t in specials[1:-1]]  # never emitted; <|endoftext|> ends, <|notimestamps|> stays
    cfg = WhisperConfig(
        vocab_size=len(vocab), num_mel_bins=80, d_model=d_model, encoder_layers=layers, encoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=2 * d_model,
        max_source_positions=50 * chunk_s, max_target_positions=max_target_positions, pad_token_id=eot,
        bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot, suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(cfg)
        with torch.no_grad():  # tied output projection: words far likelier than timestamps (see the module doc)
            emb = model.get_decoder().embed_tokens.weight
            emb[sorted(words)] *= 4.0
            emb[vocab["<|notimestamps|>"]:] *= 0.05
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        max_length=max_target_positions // 2, is_multilingual=True, return_timestamps=False,
        lang_to_id={t: vocab[t] for t in languages},
        task_to_id={"translate": vocab["<|translate|>"], "transcribe": vocab["<|transcribe|>"]},
        no_timestamps_token_id=vocab["<|notimestamps|>"], prev_sot_token_id=vocab["<|startofprev|>"],
        suppress_tokens=suppress, begin_suppress_tokens=[eot],
    )
    with quiet_transformers():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, n_fft=400,
                            chunk_length=chunk_s).save_pretrained(path)
    return path
