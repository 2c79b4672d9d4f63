"""Tiny raw corpora in each corpus's REAL layout (DATASETS.md), faults included, for parser and pipeline tests.

Every `make_<corpus>(root, ...)` writes a corpus into the folder `root` (created) and returns a `RawCorpus`
describing what a parser must find with the DEFAULT label policy: ids in yield order, per-id expected fields,
drop reasons and skipped files. Audio is a short generated tone WAV (soundfile) at the corpus's real sample
rate and channel count; MELD and MEAD clips are WAV bytes under their `.mp4` / `.m4a` names (the parsers never
decode audio; FFmpeg, which the normalizer uses, reads them by content).
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 88364\n"
)


@functools.lru_cache(maxsize=32)
def tone_wav_bytes(sr: int, channels: int = 1, seconds: float = 0.5, freq: float = 220.0) -> bytes:
    """A PCM16 WAV holding a sine tone: `seconds` long, `sr` Hz, `channels` channels."""
    n = int(round(sr * seconds))
    t = np.arange(n, dtype=np.float64) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    if channels > 1:
        x = np.repeat(x[:, None], channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_tone(path: Path, sr: int, channels: int = 1, seconds: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tone_wav_bytes(sr, channels, seconds))
    return path


def write_header_only_wav(path: Path, sr: int = 16000) -> Path:
    """A WAV with a valid header and no samples (CREMA-D's `1076_MTI_SAD_XX.wav`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, dtype=np.int16), sr, format="WAV", subtype="PCM_16")
    path.write_bytes(buf.getvalue())
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_unclosed_quote_csv(path: Path, header: str) -> Path:
    """A CSV whose first row opens a quote that never closes: the csv module reads the rest of the file as one
    field and fails with `csv.Error: field larger than field limit` (a hand-edited transcript list)."""
    lines = [header, '1,"never closed'] + [f"{i},more text {i}" for i in range(2, 12000)]
    return write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


@dataclass
class RawCorpus:
    """What was written and what a parser must report with the default policy."""

    root: Path
    dataset: str
    found: int = 0
    ids: list[str] = field(default_factory=list)  # yielded ids, in parser order
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {label, text, speaker, split, ...}
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path below root, substring of the reason)
    options: dict[str, Any] = field(default_factory=dict)  # parser options this corpus needs

    def expect(self, item_id: str, **fields: Any) -> None:
        self.ids.append(item_id)
        self.expected[item_id] = fields

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def skip(self, rel: str, reason: str) -> None:
        self.skipped.append((rel, reason))


# ---------------------------------------------------------------------------------------------------- RAVDESS
RAVDESS_TEXT = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def make_ravdess(root: Path, seconds: float = 0.5) -> RawCorpus:
    """`Actor_XX/*.wav` (48 kHz mono) with calm, a song file, an unknown emotion code, a bad name, macOS debris."""
    c = RawCorpus(root, "RAVDESS")
    rows = [  # (actor, name, label, text code)
        ("01", "03-01-01-01-01-01-01", "neutral", "01"),
        ("01", "03-01-02-02-02-01-01", "neutral", "02"),  # calm -> neutral (default policy)
        ("01", "03-01-05-02-01-02-01", "anger", "01"),
        ("02", "03-01-03-02-01-01-02", "joy", "01"),
        ("02", "03-01-06-01-02-01-02", "fear", "02"),
        ("02", "03-01-08-01-02-02-02", "surprise", "02"),
    ]
    for actor, name, label, code in rows:
        write_tone(root / f"Actor_{actor}" / f"{name}.wav", 48000, 1, seconds)
        c.expect(f"RAVDESS/Actor_{actor}/{name}", label=label, text=RAVDESS_TEXT[code],
                 speaker=f"RAVDESS/Actor_{actor}", split=None)
    write_tone(root / "Actor_02" / "03-01-09-01-01-01-02.wav", 48000, 1, seconds)
    c.skip("Actor_02/03-01-09-01-01-01-02.wav", "unknown emotion code 09")
    write_tone(root / "Actor_02" / "take2.wav", 48000, 1, seconds)
    c.skip("Actor_02/take2.wav", "not a RAVDESS file name")
    write_tone(root / "Audio_Song_Actors_01-24" / "Actor_01" / "03-02-03-01-01-01-01.wav", 48000, 1, seconds)
    c.drop("RAVDESS song file (vocal channel 02) excluded: speech only")
    write_bytes(root / "__MACOSX" / "Actor_01" / "._03-01-01-01-01-01-01.wav", b"\x00\x05\x16\x07 mac resource")
    write_bytes(root / "Actor_01" / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    c.found = 9
    return c


# ---------------------------------------------------------------------------------------------------- CREMA-D
def make_cremad(root: Path, demographics: bool = True, seconds: float = 0.5) -> RawCorpus:
    """`AudioWAV/*.wav` (16 kHz) with `1040_ITH_SAD_X.wav`, a header-only `1076_MTI_SAD_XX.wav`, a Git LFS pointer,
    an unknown sentence code, an actor missing from `VideoDemographics.csv` (written when `demographics`)."""
    c = RawCorpus(root, "CREMA-D")
    genders = {"1001": "M", "1002": "F", "1003": "M", "1040": "F"}
    rows = [  # (name, label, text)
        ("1001_DFA_ANG_XX", "anger", "Don't forget a jacket"),
        ("1001_IEO_HAP_HI", "joy", "It's eleven o'clock"),
        ("1002_TIE_SAD_LO", "sadness", "That is exactly what happened"),
        ("1003_IOM_NEU_XX", "neutral", "I'm on my way to the meeting"),
        ("1040_ITH_SAD_X", "sadness", "I think I have a doctor's appointment"),
        ("1091_WSI_DIS_MD", "disgust", "We'll stop in a couple of minutes"),
    ]
    for name, label, text in rows:
        write_tone(root / "AudioWAV" / f"{name}.wav", 16000, 1, seconds)
        actor = name[:4]
        c.expect(f"CREMA-D/AudioWAV/{name}", label=label, text=text, speaker=f"CREMA-D/{actor}", split=None,
                 gender=genders.get(actor) if demographics else None)
    write_header_only_wav(root / "AudioWAV" / "1076_MTI_SAD_XX.wav")
    c.skip("AudioWAV/1076_MTI_SAD_XX.wav", "WAV header only, no audio samples")
    write_bytes(root / "AudioWAV" / "1003_IWW_FEA_MD.wav", LFS_POINTER.encode())
    c.skip("AudioWAV/1003_IWW_FEA_MD.wav", "Git LFS pointer")
    write_tone(root / "AudioWAV" / "1005_XYZ_ANG_HI.wav", 16000, 1, seconds)
    c.skip("AudioWAV/1005_XYZ_ANG_HI.wav", "unknown sentence code XYZ")
    if demographics:
        lines = ['"ActorID","Age","Sex","Race","Ethnicity"']
        lines += [
            '1001,51,"Male","Caucasian","Not Hispanic"',
            '1002,21,"Female","Caucasian","Not Hispanic"',
            '1003,21,"Male","Caucasian","Not Hispanic"',
            '1040,31,"Female","African American","Not Hispanic"',
            '1076,25,"Female","Asian","Not Hispanic"',
        ]
        write_bytes(root / "VideoDemographics.csv", ("\r\n".join(lines) + "\r\n").encode())
    c.ids.sort()
    c.found = 9
    return c


# ---------------------------------------------------------------------------------------------------- MELD
MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


def _meld_row(sr: int, text: str, speaker: str, emotion: str, sentiment: str, dia: int, utt: int) -> str:
    quoted = '"' + text.replace('"', '""') + '"'
    return f'{sr},{quoted},{speaker},{emotion},{sentiment},{dia},{utt},4,7,"00:20:57,256","00:21:00,049"'


def make_meld(root: Path, nested: bool = True, seconds: float = 0.5) -> RawCorpus:
    """MELD.Raw: three CSVs (dev one cp1252 with `\\x92`), clips as WAV bytes named `.mp4` (48 kHz stereo) in
    `train_splits/`, `dev_splits_complete/`, `output_repeated_splits_test/` (under `train/ dev/ test/` when
    `nested`). Faults: a row without clip (train), dev `dia110_utt7` missing, a clip without row, an unknown
    emotion, `final_videos_testdia0_utt0.mp4` beside a plain `dia0_utt0.mp4`."""
    c = RawCorpus(root, "MELD")
    train_dir = root / "train" / "train_splits" if nested else root / "train_splits"
    dev_dir = root / "dev" / "dev_splits_complete" if nested else root / "dev_splits_complete"
    test_dir = root / "test" / "output_repeated_splits_test" if nested else root / "output_repeated_splits_test"
    train_csv = root / "train" / "train_sent_emo.csv" if nested else root / "train_sent_emo.csv"

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    train_rows = [
        (1, "Oh my God, he’s lost it. He’s totally lost it.", "Phoebe", "sadness", "negative", 0, 0),
        (2, "What?", "Monica", "surprise", "negative", 0, 1),
        (3, "Hi, Joey!", "Rachel", "joy", "positive", 1, 0),
        (4, "I'm here.", "Joey", "neutral", "neutral", 1, 1),  # no clip
        (5, "Hmm.", "Ross", "confused", "neutral", 1, 2),  # unknown emotion
    ]
    write_bytes(train_csv, ("\n".join([MELD_HEADER] + [_meld_row(*r) for r in train_rows]) + "\n").encode("utf-8"))
    for dia, utt in [(0, 0), (0, 1), (1, 0), (1, 2), (9, 9)]:
        write_bytes(train_dir / f"dia{dia}_utt{utt}.mp4", tone_wav_bytes(48000, 2, seconds))
    for _sr, text, speaker, emotion, _sentiment, dia, utt in train_rows[:3]:
        c.expect(f"MELD/train/dia{dia}_utt{utt}", label=emotion, text=text, speaker=f"MELD/{speaker}",
                 split="train", turn=utt, dialogue_id=f"MELD/train/dia{dia}")
    c.skip(rel(train_csv), "row 4 (Sr No. 4): no clip dia1_utt1.mp4 in the train folder")
    c.skip(rel(train_dir / "dia1_utt2.mp4"), "unknown emotion 'confused'")

    dev_rows = [
        (1, "I don’t know.", "Chandler", "fear", "negative", 0, 0),
        (2, "Okay.", "Joey", "neutral", "neutral", 110, 7),  # the clip missing from every copy
    ]
    dev_text = "\n".join([MELD_HEADER] + [_meld_row(*r) for r in dev_rows]) + "\n"
    write_bytes(root / "dev_sent_emo.csv", dev_text.encode("cp1252"))  # ’ -> \x92
    write_bytes(dev_dir / "dia0_utt0.mp4", tone_wav_bytes(48000, 2, seconds))
    c.expect("MELD/val/dia0_utt0", label="fear", text="I don’t know.", speaker="MELD/Chandler", split="val",
             turn=0, dialogue_id="MELD/val/dia0")
    c.skip("dev_sent_emo.csv", "row 2 (Sr No. 2): no clip dia110_utt7.mp4 in the val folder")

    test_rows = [
        (1, "Yeah.", "Ross", "anger", "negative", 0, 0),
        (2, "No way!", "Monica", "disgust", "negative", 1, 0),
    ]
    write_bytes(root / "test_sent_emo.csv",
                ("\n".join([MELD_HEADER] + [_meld_row(*r) for r in test_rows]) + "\n").encode("utf-8"))
    write_bytes(test_dir / "dia0_utt0.mp4", tone_wav_bytes(48000, 2, seconds))
    write_bytes(test_dir / "final_videos_testdia0_utt0.mp4", tone_wav_bytes(48000, 6, seconds))
    write_bytes(test_dir / "dia1_utt0.mp4", tone_wav_bytes(48000, 2, seconds))
    c.skip(rel(test_dir / "dia0_utt0.mp4"), "superseded by final_videos_testdia0_utt0.mp4")
    c.expect("MELD/test/dia0_utt0", label="anger", text="Yeah.", speaker="MELD/Ross", split="test", turn=0,
             dialogue_id="MELD/test/dia0", source=rel(test_dir / "final_videos_testdia0_utt0.mp4"))
    c.expect("MELD/test/dia1_utt0", label="disgust", text="No way!", speaker="MELD/Monica", split="test", turn=0,
             dialogue_id="MELD/test/dia1")
    c.skip(rel(train_dir / "dia9_utt9.mp4"), "no CSV row for this clip")
    c.found = 9
    return c


# ---------------------------------------------------------------------------------------------------- IEMOCAP
def _iemocap_eval_block(start: float, end: float, turn: str, label: str, vad: tuple[float, float, float]) -> str:
    v, a, d = vad
    return (
        f"[{start:.4f} - {end:.4f}]\t{turn}\t{label}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n"
        f"C-E1:\tNeutral;\t()\nC-E2:\tNeutral;\t()\nA-E1:\tval 3; act 2; dom  2;\t()\n\n"
    )


def make_iemocap(root: Path, seconds: float = 0.5) -> RawCorpus:
    """Two sessions in the full-release layout (16 kHz): EmoEvaluation with lines out of time order, a rater
    subfolder holding a decoy line, transcripts with an `_MXX0` line, a dialog-level WAV, fru and xxx turns,
    a turn WAV without evaluation, a turn without transcript, and `Ses01F_..._M000` (speaker Ses01_M)."""
    c = RawCorpus(root, "IEMOCAP")
    # (session, dialog, turn suffix, start, end, label, V/A/D, transcript or None, expected 7-class or None)
    sessions = {
        1: ("Ses01F_impro01", [
            ("F000", 6.2901, 8.2357, "neu", (2.5, 2.5, 2.5), "Excuse me.", "neutral"),
            ("F001", 10.01, 11.3925, "exc", (4.0, 3.5, 3.0), "Yeah.", "joy"),
            ("M000", 8.5, 9.9, "fru", (2.0, 3.5, 3.5), "Do you have your forms?", None),
            ("M001", 12.0, 14.0, "xxx", (2.5, 3.0, 3.0), "Fine.", None),
        ]),
        2: ("Ses02M_script01_1", [
            ("F000", 1.0, 2.5, "ang", (1.5, 4.0, 4.0), "Get out!", "anger"),
            ("F001", 7.0, 8.0, "sur", (3.5, 4.0, 3.0), None, "surprise"),
            ("M000", 3.0, 4.5, "sad", (1.5, 2.0, 2.0), "I miss her.", "sadness"),
            ("M001", 5.0, 6.5, "hap", (4.5, 3.5, 3.5), "Great news!", "joy"),
        ]),
    }
    for session, (dialog, turns) in sessions.items():
        base = root / f"Session{session}"
        evals = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        trans = ""
        order = sorted(turns, key=lambda t: t[1])
        for suffix, start, end, label, vad, text, _ in turns:  # written in name order, not time order
            name = f"{dialog}_{suffix}"
            evals += _iemocap_eval_block(start, end, name, label, vad)
            if text is not None:
                trans += f"{name} [{start:08.4f}-{end:08.4f}]: {text}\n"
            write_tone(base / "sentences" / "wav" / dialog / f"{name}.wav", 16000, 1, seconds)
        trans += f"{dialog}_MXX0 [015.0000-016.0000]: Okay.\n"
        write_bytes(base / "dialog" / "EmoEvaluation" / f"{dialog}.txt", evals.encode())
        write_bytes(base / "dialog" / "transcriptions" / f"{dialog}.txt", trans.encode())
        decoy = _iemocap_eval_block(turns[0][1], turns[0][2], f"{dialog}_{turns[0][0]}", "dis", (1.0, 1.0, 1.0))
        write_bytes(base / "dialog" / "EmoEvaluation" / "Categorical" / f"{dialog}_e1_cat.txt", decoy.encode())
        write_tone(base / "dialog" / "wav" / f"{dialog}.wav", 16000, 2, seconds)  # dialog-level audio: ignored
        for suffix, _start, _end, label, vad, text, target in turns:
            name = f"{dialog}_{suffix}"
            item_id = f"IEMOCAP/Session{session}/sentences/wav/{dialog}/{name}"
            if target is None:
                c.drop(f"IEMOCAP {label} dropped by policy")
                continue
            c.expect(item_id, label=target, text=text or "", speaker=f"IEMOCAP/Ses0{session}_{suffix[0]}",
                     split=None, turn=[t[0] for t in order].index(suffix), dialogue_id=f"IEMOCAP/{dialog}",
                     vad=vad, source_label=label)
    write_tone(root / "Session2" / "sentences" / "wav" / "Ses02M_script01_1" / "Ses02M_script01_1_F002.wav",
               16000, 1, seconds)
    c.skip("Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F002.wav", "no EmoEvaluation line")
    c.found = 9
    return c


# ---------------------------------------------------------------------------------------------------- ESD
def make_esd(root: Path, seconds: float = 0.5) -> RawCorpus:
    """Speakers 0001 (UTF-16 with BOM), 0002 (GB2312, train/test subfolders), 0011 (ASCII, one space-separated
    line), 0016 (UTF-16LE without BOM), 0013 (no transcript file), a WAV outside an emotion folder (16 kHz)."""
    c = RawCorpus(root, "ESD")
    files = {  # speaker -> (transcript lines, encoding or None for no file)
        "0001": (["0001_000001\t打远一看，它们的确很是美丽，\t中立", "0001_000351\t我们早就该对他们采取行动了。\t生气"],
                 "utf-16"),
        "0002": (["0002_000701\t今天天气真好。\t快乐"], "gb2312"),
        "0011": (["0011_000001\tAuthor of the danger trail, Philip Steels, etc.\tNeutral",
                  "0011_001401 The boy ran home quickly. Surprise"], "ascii"),
        "0016": (["0016_001051\tI am so sad today.\tSad"], "utf-16-le"),
    }
    for spk, (lines, encoding) in files.items():
        write_bytes(root / spk / f"{spk}.txt", ("\r\n".join(lines) + "\r\n").encode(encoding))
    rows = [  # (path below root, text, label, language, gender)
        ("0001/Angry/0001_000351.wav", "我们早就该对他们采取行动了。", "anger", "zh", "F"),
        ("0001/Neutral/0001_000001.wav", "打远一看，它们的确很是美丽，", "neutral", "zh", "F"),
        ("0002/Happy/train/0002_000701.wav", "今天天气真好。", "joy", "zh", "F"),
        ("0002/Sad/test/0002_001051.wav", "", "sadness", "zh", "F"),  # no line in 0002.txt
        ("0011/Neutral/evaluation/0011_000001.wav", "Author of the danger trail, Philip Steels, etc.", "neutral",
         "en", "M"),
        ("0011/Surprise/0011_001401.wav", "The boy ran home quickly.", "surprise", "en", "M"),
        ("0013/Angry/0013_000351.wav", "", "anger", "en", "M"),  # no 0013.txt
        ("0016/Sad/0016_001051.wav", "I am so sad today.", "sadness", "en", "F"),
    ]
    for rel, text, label, language, gender in rows:
        write_tone(root / rel, 16000, 1, seconds)
        spk = rel[:4]
        c.expect("ESD/" + rel[:-4], label=label, text=text, speaker=f"ESD/{spk}", split=None, language=language,
                 gender=gender)
    write_tone(root / "0001" / "stray.wav", 16000, 1, seconds)
    c.skip("0001/stray.wav", "not under a {speaker}/{Emotion}/ folder")
    c.ids.sort()
    c.found = 9
    return c


# ---------------------------------------------------------------------------------------------------- EmoV-DB
ARCTIC = {
    "arctic_a0001": "Author of the danger trail, Philip Steels, etc.",
    "arctic_a0002": "Not at this particular case, Tom, apologized Whittemore.",
    "arctic_a0003": "For the twentieth time that evening the two men shook hands.",
    "arctic_a0004": "Lord, but I'm glad to see you again, Phil.",
    "arctic_a0005": "Will we ever forget it.",
    "arctic_a0154": "He was a man of action.",
}


def make_emovdb(root: Path, layout: str = "flat", cmuarctic: bool = True, seconds: float = 0.5) -> RawCorpus:
    """`{speaker}_{Emotion}/` (layout "flat") or `{speaker}/{emotion}/` (layout "nested") with odd file prefixes
    (`sleepiness_`, capitalised `Neutral_`, `amused_141_168_0154`), a prompt missing from `cmuarctic.data`
    (written below the root when `cmuarctic`), a Sleepy clip. bea is 44.1 kHz, the others 16 kHz."""
    if layout not in ("flat", "nested"):
        raise ValueError(f"layout {layout!r}: expected flat or nested")
    c = RawCorpus(root, "EmoV-DB")
    rows = [  # (speaker, emotion folder flat, emotion folder nested, file, label or None, prompt)
        ("bea", "Amused", "amused", "amused_1-15_0001", "joy", "arctic_a0001"),
        ("bea", "Amused", "amused", "amused_141_168_0154", "joy", "arctic_a0154"),
        ("bea", "Sleepy", "sleepy", "sleepiness_1-28_0005", None, "arctic_a0005"),
        ("jenie", "Angry", "angry", "anger_1-28_0002", "anger", "arctic_a0002"),
        ("jenie", "Angry", "angry", "anger_1-28_0599", "anger", "arctic_a0599"),  # not in cmuarctic.data
        ("josh", "Neutral", "neutral", "Neutral_1-28_0004", "neutral", "arctic_a0004"),
        ("sam", "Disgusted", "disgusted", "disgust_1-28_0003", "disgust", "arctic_a0003"),
    ]
    for speaker, flat, nested, name, label, prompt in rows:
        folder = Path(f"{speaker}_{flat}") if layout == "flat" else Path(speaker) / nested
        write_tone(root / folder / f"{name}.wav", 44100 if speaker == "bea" else 16000, 1, seconds)
        if label is None:
            c.drop("EmoV-DB Sleepy dropped by policy")
            continue
        text = ARCTIC.get(prompt, "") if cmuarctic else ""
        c.expect(f"EmoV-DB/{(folder / name).as_posix()}", label=label, text=text, speaker=f"EmoV-DB/{speaker}",
                 split=None, source_label=flat)
    if cmuarctic:
        lines = "".join(f'( {k} "{v}" )\n' for k, v in ARCTIC.items())
        write_bytes(root / "etc" / "cmuarctic.data", lines.encode())
    c.ids.sort()
    c.found = 7
    return c


# ---------------------------------------------------------------------------------------------------- MEAD
MEAD_SENTENCES = (
    "emotion,index,text\n"
    ",1,She had your dark suit in greasy wash water all year.\n"
    ",2,Don't ask me to carry an oily rag like that.\n"
    "angry,2,I am furious about this.\n"
)


def make_mead(root: Path, sentences: str = "root", seconds: float = 0.5) -> RawCorpus:
    """`{subject}/audio/{emotion}/level_N/NNN.m4a` (WAV bytes, 48 kHz mono) with contempt, an unknown emotion
    folder, a clip with no sentence. `sentences`: "root" writes `mead_sentences.csv` below the root, "outside"
    writes it beside the root and puts it in `options["sentences"]`, "none" writes none."""
    if sentences not in ("root", "outside", "none"):
        raise ValueError(f"sentences {sentences!r}: expected root, outside or none")
    c = RawCorpus(root, "MEAD")
    with_text = sentences != "none"
    rows = [  # (subject, emotion, level, clip, label or None, text)
        ("M003", "happy", 2, "001", "joy", "She had your dark suit in greasy wash water all year."),
        ("M003", "surprised", 1, "031", "surprise", ""),  # no sentence 31
        ("W019", "angry", 3, "002", "anger", "I am furious about this."),  # emotion-specific row wins
        ("W019", "contempt", 1, "001", None, ""),
        ("W019", "neutral", 1, "001", "neutral", "She had your dark suit in greasy wash water all year."),
    ]
    for subject, emotion, level, clip, label, text in rows:
        rel = f"{subject}/audio/{emotion}/level_{level}/{clip}.m4a"
        write_bytes(root / rel, tone_wav_bytes(48000, 1, seconds))
        if label is None:
            c.drop("MEAD contempt dropped by policy")
            continue
        c.expect(f"MEAD/{rel[:-4]}", label=label, text=text if with_text else "", speaker=f"MEAD/{subject}",
                 split=None, intensity=f"level_{level}", gender="F" if subject[0] == "W" else "M")
    write_bytes(root / "M003/audio/calm/level_1/001.m4a", tone_wav_bytes(48000, 1, seconds))
    c.skip("M003/audio/calm/level_1/001.m4a", "unknown emotion folder 'calm'")
    if sentences == "root":
        write_bytes(root / "mead_sentences.csv", MEAD_SENTENCES.encode())
    elif sentences == "outside":
        path = write_bytes(root.parent / f"{root.name}_sentences.csv", MEAD_SENTENCES.encode())
        c.options["sentences"] = path
    c.found = 6
    return c


# ---------------------------------------------------------------------------------------------------- EmoDB
EMODB_TEXT = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}


def make_emodb(root: Path, seconds: float = 0.5) -> RawCorpus:
    """`wav/SSTTTEV.wav` (16 kHz mono) with boredom, a bad name, an unknown text code, a non-audio folder."""
    c = RawCorpus(root, "EmoDB")
    rows = [  # (stem, label or None, gender)
        ("03a01Fa", "joy", "M"),
        ("03a01Nc", "neutral", "M"),
        ("08b02Lb", None, "F"),
        ("09a07Wa", "anger", "F"),
        ("13a04Ec", "disgust", "F"),
        ("14b09Ab", "fear", "F"),
        ("16b10Tb", "sadness", "F"),
    ]
    for stem, label, gender in rows:
        write_tone(root / "wav" / f"{stem}.wav", 16000, 1, seconds)
        if label is None:
            c.drop("EmoDB boredom dropped by policy")
            continue
        c.expect(f"EmoDB/wav/{stem}", label=label, text=EMODB_TEXT[stem[2:5]], speaker=f"EmoDB/{stem[:2]}",
                 split=None, gender=gender)
    write_tone(root / "wav" / "03x99Fa.wav", 16000, 1, seconds)
    c.skip("wav/03x99Fa.wav", "not an EmoDB file name")
    write_tone(root / "wav" / "10a03Wa.wav", 16000, 1, seconds)
    c.skip("wav/10a03Wa.wav", "unknown text code a03")
    write_bytes(root / "lablaut" / "03a01Fa.lab", b"0.0 pau\n")
    c.found = 9
    return c


# ---------------------------------------------------------------------------------------------------- folder
def make_folder(root: Path, layout: str = "split", seconds: float = 0.5) -> RawCorpus:
    """A user's folder-per-label corpus (16 kHz): `root/{train,val,test}/{label}/` (layout "split") or
    `root/{label}/` ("flat"), `transcripts.csv`, a folder mapped by label_map (`happy` -> joy), a dropped folder
    (`mumble`), an unknown label folder (`weird`); options for parse_folder in `options`."""
    if layout not in ("split", "flat"):
        raise ValueError(f"layout {layout!r}: expected split or flat")
    c = RawCorpus(root, "MyCorpus")
    rows = [  # (split, folder, file, label or None, text)
        ("test", "anger", "spk4_001", "anger", ""),
        ("test", "mumble", "spk4_002", None, ""),
        ("train", "Neutral", "spk2_001", "neutral", ""),
        ("train", "anger", "spk1_001", "anger", "I am angry"),
        ("train", "happy", "spk1_002", "joy", "Great, thanks"),
        ("val", "sadness", "spk3_001", "sadness", "So sad"),
    ]
    transcripts = ["path,text"]
    for split, folder, name, label, text in rows:
        rel = f"{split}/{folder}/{name}.wav" if layout == "split" else f"{folder}/{name}.wav"
        write_tone(root / rel, 16000, 1, seconds)
        if text:
            transcripts.append(f'{rel},"{text}"')
        if label is None:
            c.drop("MyCorpus folder 'mumble' dropped by label_map")
            continue
        c.expect(f"MyCorpus/{rel[:-4]}", label=label, text=text, speaker=f"MyCorpus/{name.split('_')[0]}",
                 split=split if layout == "split" else None, source_label=folder)
    weird = "train/weird/spk1_003.wav" if layout == "split" else "weird/spk1_003.wav"
    write_tone(root / weird, 16000, 1, seconds)
    c.skip(weird, "unknown label folder 'weird'")
    found = 7
    if layout == "split":
        write_tone(root / "misc" / "anger" / "x_1.wav", 16000, 1, seconds)
        c.skip("misc/anger/x_1.wav", "not under train/, val/ (or dev/, valid/, validation/) or test/")
        found += 1
    write_bytes(root / "transcripts.csv", ("\n".join(transcripts) + "\n").encode())
    c.options = {"name": "MyCorpus", "label_map": {"happy": "joy", "mumble": "drop"}}
    c.ids.sort()
    c.found = found
    return c


# ---------------------------------------------------------------------------------------------------- MSP-Podcast
MSP_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
# (stem, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set, transcript or None,
#  expected: (label, split, speaker, gender, (arousal, valence, dominance)) or None)
MSP_ROWS: list[tuple[Any, ...]] = [
    ("MSP-PODCAST_0001_0008", "A", "5.6", "2.2", "5.0", "127", "Female", "Train", "Stop doing that right now.",
     ("anger", "train", "MSP-Podcast/127", "F", (5.6, 2.2, 5.0))),
    ("MSP-PODCAST_0001_0010", "H", "4.4", "6.0", "4.2", "127", "Female", "Train", "That was\n  wonderful!\n",
     ("joy", "train", "MSP-Podcast/127", "F", (4.4, 6.0, 4.2))),
    ("MSP-PODCAST_0002_0001", "N", "4.0", "4.0", "4.0", "5", "Male", "Development", "We start at nine.",
     ("neutral", "val", "MSP-Podcast/5", "M", (4.0, 4.0, 4.0))),
    ("MSP-PODCAST_0003_0002", "S", "2.8", "2.0", "3.4", "Unknown", "Unknown", "Test1", "I miss them.",
     ("sadness", "test", "MSP-Podcast/unknown_MSP-PODCAST_0003_0002", None, (2.8, 2.0, 3.4))),
    ("MSP-PODCAST_0004_0001", "U", "5.0", "4.6", "4.0", "310", "Male", "Test2", "Really? No way.",
     ("surprise", "test", "MSP-Podcast/310", "M", (5.0, 4.6, 4.0))),
    ("MSP-PODCAST_0004_0002", "F", "5.2", "2.4", "3.0", "310", "Male", "Test2", None,  # no transcript file
     ("fear", "test", "MSP-Podcast/310", "M", (5.2, 2.4, 3.0))),
    ("MSP-PODCAST_0005_0001", "D", "4.8", "2.6", "n/a", "88", "Female", "Train", "Gross.",  # bad EmoDom
     ("disgust", "train", "MSP-Podcast/88", "F", (4.8, 2.6, None))),
    ("MSP-PODCAST_0005_0002", "C", "4.2", "3.0", "5.2", "88", "Female", "Train", "Whatever.", None),
    ("MSP-PODCAST_0006_0001", "O", "3.6", "3.8", "4.0", "12", "Male", "Train", "Hmm.", None),
    ("MSP-PODCAST_0006_0002", "X", "4.0", "4.2", "4.4", "12", "Male", "Test1", "So anyway.", None),
    ("MSP-PODCAST_0007_0001", "Z", "4.0", "4.0", "4.0", "12", "Male", "Train", "Odd code.", None),
    ("MSP-PODCAST_0008_0001", "N", "4.0", "4.0", "4.0", "12", "Male", "Train", "No audio.", None),  # no WAV
]


def make_msppodcast(root: Path, fmt: str = "csv", seconds: float = 0.5) -> RawCorpus:
    """The MSP-Podcast release layout (16 kHz mono): `Audios/*.wav`, `Labels/labels_consensus.csv` (fmt "csv") or
    `.json` (fmt "json": the release's object keyed by FileName, numbers as JSON numbers), `Transcripts/*.txt`.
    Rows of every class, C/O/X (dropped by the default policy), an unknown code Z, an unparseable EmoDom, a
    SpkrID/Gender "Unknown", Test1 and Test2, a row without WAV, a WAV without row, a WAV without transcript."""
    if fmt not in ("csv", "json"):
        raise ValueError(f"fmt {fmt!r}: expected csv or json")
    c = RawCorpus(root, "MSP-Podcast")
    labels = root / "Labels" / f"labels_consensus.{fmt}"
    for stem, code, _a, _v, _d, _spk, _g, split_set, text, want in MSP_ROWS:
        if stem != "MSP-PODCAST_0008_0001":
            write_tone(root / "Audios" / f"{stem}.wav", 16000, 1, seconds)
        if text is not None:
            write_bytes(root / "Transcripts" / f"{stem}.txt", text.encode())
        if want is not None:
            label, split, speaker, gender, vad = want
            c.expect(f"MSP-Podcast/Audios/{stem}", label=label, source_label=code, split=split, speaker=speaker,
                     gender=gender, vad=vad, text=" ".join((text or "").split()), language="en",
                     split_set=split_set)
        elif code in ("C", "O", "X"):
            c.drop(f"MSP-Podcast {code} dropped by policy")
    write_tone(root / "Audios" / "MSP-PODCAST_0009_0001.wav", 16000, 1, seconds)
    c.skip("Audios/MSP-PODCAST_0007_0001.wav", "unknown EmoClass code 'Z'")
    c.skip(f"Labels/labels_consensus.{fmt}", "no WAV MSP-PODCAST_0008_0001.wav")
    c.skip("Audios/MSP-PODCAST_0009_0001.wav", f"no label row in labels_consensus.{fmt}")
    if fmt == "csv":
        lines = [",".join(MSP_COLUMNS)] + [",".join([f"{r[0]}.wav", *r[1:8]]) for r in MSP_ROWS]
        write_bytes(labels, ("\ufeff" + "\r\n".join(lines) + "\r\n").encode())  # a BOM, as the release's CSV has
    else:
        import json

        def value(column: str, text: str) -> Any:
            if column in ("EmoAct", "EmoVal", "EmoDom"):
                try:
                    return float(text)
                except ValueError:
                    return text
            return int(text) if column == "SpkrID" and text.isdigit() else text

        data = {f"{r[0]}.wav": {col: value(col, v) for col, v in zip(MSP_COLUMNS[1:], r[1:8], strict=True)}
                for r in MSP_ROWS}
        write_bytes(labels, json.dumps(data, indent=2).encode())
    c.found = 12  # WAVs: 11 with a label row, 1 without
    return c


# ---------------------------------------------------------------------------------------------------- checking
def run_parser(parse: Any, root: Path, policy: Any = None, **options: Any) -> tuple[list[Any], Any]:
    """Run a parser to the end with a fresh ParseReport: (items, report)."""
    from mer_builder.prepare.policy import LabelPolicy
    from mer_builder.prepare.records import ParseReport

    report = ParseReport(dataset="test")
    items = list(parse(Path(root), policy or LabelPolicy(), report, **options))
    return items, report


def parse_by_id(parse: Any, root: Path, policy: Any = None, **options: Any) -> dict[str, Any]:
    """Run a parser to the end (as `run_parser`) and key its items by id, for exact-row assertions."""
    items, _ = run_parser(parse, root, policy, **options)
    return {it.id: it for it in items}


def assert_matches(corpus: RawCorpus, items: list[Any], report: Any) -> None:
    """The parser's items and report agree with what the fixture wrote (default policy)."""
    assert [it.id for it in items] == corpus.ids
    for it in items:
        want = corpus.expected[it.id]
        for key in ("label", "text", "speaker", "split", "gender", "source_label", "turn", "dialogue_id",
                    "intensity", "language"):
            if key in want:
                assert getattr(it, key) == want[key], (it.id, key, getattr(it, key), want[key])
        assert it.dataset == corpus.dataset
        assert it.source_path.is_file()
        if "source" in want:
            assert it.source_path == corpus.root / want["source"]
    assert report.found == corpus.found
    assert report.yielded == len(corpus.ids)
    assert report.dropped == corpus.dropped
    got = [(Path(s["path"]).relative_to(corpus.root).as_posix(), s["reason"]) for s in report.skipped]
    assert len(got) == len(corpus.skipped), got
    for rel, reason in corpus.skipped:
        hits = [g for g in got if g[0] == rel and reason in g[1]]
        assert len(hits) == 1, (rel, reason, got)


def real_emodb_dir() -> Path | None:
    """The real EmoDB corpus: `$MER_EMODB`, else `shared/data/emodb` beside the repository; None when absent
    (as on a user's machine), so that the tests that need it skip."""
    env = os.environ.get("MER_EMODB")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "emodb")
    return next((c for c in candidates if (c / "wav").is_dir()), None)
