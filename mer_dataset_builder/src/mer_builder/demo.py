"""A small generated demo corpus in the REAL raw layouts of RAVDESS and MELD, spoken by espeak-ng.

`make_demo(out)` writes `out/RAVDESS/Actor_NN/03-01-EE-II-SS-RR-NN.wav` (48 kHz mono PCM16, the two real
statements) and `out/MELD/` (the three CSVs with the real header, quoting and time format; AAC-in-MP4
clips, 48 kHz stereo, in `train_splits/`, `dev_splits_complete/`, `output_repeated_splits_test/`). MELD
turns are emotion-bearing sentences from a small bank per emotion, so the text carries signal too.
With `iemocap=True` it also writes `out/IEMOCAP/` in the full-release layout (DATASETS.md): five sessions of
one dialog between two speakers each, `Session{n}/sentences/wav/{dialog}/{turn}.wav` (16 kHz mono PCM16),
`Session{n}/dialog/EmoEvaluation/{dialog}.txt` (summary line with V/A/D, then per-rater `C-`/`A-` lines) and
`Session{n}/dialog/transcriptions/{dialog}.txt` (with one line for a turn without audio, `_MXX0`), so that
session cross-validation runs on it.

Prosody depends on the emotion (rate, volume, pitch, pitch range, word gap), with a base pitch per
speaker and random jitter per utterance: the audio carries a learnable but not trivial signal.

Dimensional ratings: every clip also gets an arousal rating on a 1-5 scale, derived from the prosody drawn for it
(after the per-utterance jitter and clipping) and written to `<corpus>/.mer_demo_ratings.csv` (`id,arousal`, the id
being the manifest id the builder gives the clip); `add_demo_ratings` copies them into a built manifest's
`arousal` field (the real RAVDESS/MELD releases have no ratings, so the builder does not read them):

    arousal = clip(3 + 1.0 * (rate - 165) / 64 + 0.7 * (volume - 60) / 62 + 0.3 * (range - 45) / 55 + e, 1, 5)

with e ~ N(0, 0.25) drawn from a generator seeded by the clip's own seed (never from the plan's stream, so the
audio and CSVs stay byte-identical to a demo without ratings). 165 / 60 / 45 are the neutral rate / volume / range,
64 / 62 / 55 about the CONTRAST-scaled distance from neutral to the fastest / loudest / widest emotion. Means per
emotion on the default demo (seed 0, 10 actors): anger 4.9, fear 4.3, joy 4.1, surprise 3.9, neutral 3.0, disgust
2.1, sadness 1.4 (std 0.2-0.4 within an emotion). Valence is not generated: the prosody
table does not encode it (fear and joy are both fast and high-pitched). IEMOCAP keeps its own V/A/D lines.

Determinism: everything random is drawn from the seed in a fixed order, and each group of utterances
(one speaker) is synthesized in its own fresh process, because espeak-ng keeps state from one utterance
to the next; the same seed and settings give byte-identical files whatever the number of workers.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from mer_builder.ffmpeg import ffmpeg_exe
from mer_builder.tts import Prosody

DEMO_MARKER = ".mer_demo.json"
OUT_RATE = 48_000
MELD_HEADER = [
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
    "Season", "Episode", "StartTime", "EndTime",
]
MELD_SPLITS = {  # split -> (csv file, clip folder)
    "train": ("train_sent_emo.csv", "train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
# RAVDESS emotion code -> (RAVDESS name, 7-class label)
RAVDESS_EMOTIONS = {
    "01": ("neutral", "neutral"), "02": ("calm", "neutral"), "03": ("happy", "joy"), "04": ("sad", "sadness"),
    "05": ("angry", "anger"), "06": ("fearful", "fear"), "07": ("disgust", "disgust"),
    "08": ("surprised", "surprise"),
}
EMOTIONS = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")

# Emotion -> espeak-ng prosody: rate (words/min), volume (espeak's default 100 saturates above ~150, so
# levels stay below it), pitch offset from the speaker's base, pitch range, word gap (x10 ms).
# anger loud+fast+wide, sadness slow+low+narrow+quiet, fear fast+high, joy high+wide, disgust slow+low,
# surprise very wide range, calm a quieter, slower neutral.
CONTRAST = 1.6
EMOTION_PROSODY: dict[str, tuple[int, int, int, int, int]] = {
    "neutral": (165, 60, 0, 45, 0),
    "calm": (150, 51, -4, 35, 1),
    "joy": (185, 75, 14, 80, 0),
    "sadness": (125, 42, -12, 15, 3),
    "anger": (205, 99, 6, 85, 0),
    "fear": (215, 57, 18, 60, 1),
    "disgust": (130, 60, -10, 40, 2),
    "surprise": (180, 75, 20, 100, 0),
}

SENTENCES: dict[str, tuple[str, ...]] = {
    "anger": (
        "I can't believe you did that, I'm furious!", "Get out of my apartment right now!",
        "You lied to me again, and I'm sick of it!", "Don't you dare touch my stuff ever again.",
        "That is the last straw, I mean it!", "Stop yelling at me and listen for once!",
        "How could you be so stupid?", "I'm so angry I could scream!",
        "You ruined everything, do you hear me?", "This is totally unacceptable!",
        "Shut up, just shut up!", "Who the hell do you think you are?",
    ),
    "disgust": (
        "Ew, that is disgusting.", "Oh gross, what is that smell?", "That's revolting, get it away from me.",
        "I think I'm gonna be sick.", "Yuck, there's hair in my food.", "You actually ate that? That's nasty.",
        "Ugh, he licked the spoon and put it back.", "That is the most repulsive thing I've ever seen.",
        "Eww, don't put your feet on the table.", "Oh, that's so gross, wash your hands!",
        "I can't even look at it, it's vile.", "Ugh, the milk has gone completely sour.",
    ),
    "fear": (
        "Oh my God, did you hear that noise?", "I'm scared, please don't leave me alone.",
        "Somebody's in the apartment, call the police!", "What if he finds out? He's gonna kill me.",
        "I'm terrified of flying, I can't get on that plane.", "Please, please, don't let anything happen to her.",
        "There's a spider, there's a spider on me!", "I think someone is following us.",
        "I'm so nervous I can't breathe.", "Oh no, no, no, what do we do now?",
        "It's dark in here and I'm really frightened.", "Help! Somebody help me!",
    ),
    "joy": (
        "I got the job! This is the best day ever!", "Oh, I love it, thank you so much!",
        "We're getting married, I'm so happy!", "That's wonderful news, congratulations!",
        "Yay, pizza night with my favourite people!", "This is amazing, you guys are the best!",
        "I'm so excited I can hardly stand it!", "Ha, that was hilarious, do it again!",
        "You made my whole week, really.", "We won! We actually won!",
        "I feel fantastic today.", "I'm so proud of you, sweetie!",
    ),
    "sadness": (
        "I just miss her so much.", "He left, and he's never coming back.",
        "I'm sorry, I just can't stop crying.", "Nobody remembered my birthday.", "I lost my job today.",
        "It's over, we broke up last night.", "I feel so alone in this city.",
        "My grandmother passed away on Sunday.", "I really thought he loved me.",
        "Everything I touch falls apart.", "I don't think I can do this anymore.",
        "It was our song, and now it just hurts.",
    ),
    "surprise": (
        "Wait, what? You're pregnant?", "No way! Are you serious?", "Oh my God, you're here!",
        "You two are dating? Since when?", "Wow, I did not see that coming!", "Really? He said that?",
        "Whoa, when did you get a dog?", "You bought a house? Already?", "Get out! You won the lottery?",
        "What? How is that even possible?", "Huh! I had no idea.", "Seriously? Right now?",
    ),
    "neutral": (
        "I'll be at the coffee house around four.", "Can you pass me the remote?",
        "So, what are we doing tonight?", "The meeting got moved to Thursday.",
        "I think the keys are on the counter.", "Okay, I'll call you later.",
        "She said she'd be here at eight.", "Do we need anything from the store?",
        "It's the third door on the left.", "I'm gonna take a shower.",
        "Yeah, I talked to him this morning.", "Let me check my schedule.",
    ),
}
# Everyday follow-ups appended to a turn's emotional sentence: the same sentence rarely recurs across splits, so
# the text modality is learned from emotion-bearing words, not memorised (scripts/check_splits.py reports reuse).
FOLLOW_UPS = (
    "", "", "", "Anyway, see you at the coffee house.", "And it's only Tuesday.", "Tell Monica when she's back.",
    "I was just at the store.", "We're still on for dinner, right?", "Ross said the same thing.",
    "The cab is waiting downstairs.", "I've been thinking about it all week.", "It happened at work today.",
    "My mom called about it this morning.", "Joey, are you listening?", "It's almost midnight.",
    "Right after the wedding.", "And the rent is due Friday.", "Over by the window.", "Again, like last year.",
    "You know what I mean?", "On the way back from the museum.", "Chandler was there too.",
)
SENTIMENT = {"joy": "positive", "neutral": "neutral", "anger": "negative", "disgust": "negative",
             "fear": "negative", "sadness": "negative"}  # surprise: positive or negative, drawn per turn

MALE_VARIANTS = ("m1", "m2", "m3", "m7", "m8")
FEMALE_VARIANTS = ("f1", "f2", "f3", "Annie", "Andrea", "Alicia")
ACCENTS = ("en-us", "en", "en-029", "en-gb-x-rp")
MELD_CAST = {  # speaker -> (voice, base pitch): variants not used by the RAVDESS actors
    "Ross": ("en-us+m4", 44), "Chandler": ("en-us+m5", 50), "Joey": ("en-us+m6", 40),
    "Rachel": ("en-us+f4", 56), "Monica": ("en-us+f5", 48), "Phoebe": ("en-us+steph", 60),
}


IEMOCAP_RATE = 16_000
# IEMOCAP label -> (7-class emotion whose prosody and sentences it borrows, prosody strength, rater category,
# mean V/A/D). fru and xxx are in the mix because real dialogs have them (the builder drops them by default).
IEMOCAP_LABELS: dict[str, tuple[str, float, str, tuple[float, float, float]]] = {
    "neu": ("neutral", 1.0, "Neutral", (3.0, 2.5, 2.5)),
    "hap": ("joy", 1.0, "Happiness", (4.0, 3.0, 3.0)),
    "exc": ("joy", 1.4, "Excited", (4.0, 4.0, 3.5)),
    "sad": ("sadness", 1.0, "Sadness", (1.5, 2.0, 2.0)),
    "ang": ("anger", 1.0, "Anger", (1.5, 4.0, 4.0)),
    "fru": ("anger", 0.6, "Frustration", (2.0, 3.5, 3.5)),
    "xxx": ("neutral", 0.5, "Other", (2.5, 3.0, 3.0)),
}
# the labels each speaker's turns are drawn from, in turn, after a shuffle: every IEMOCAP-4 class per speaker
IEMOCAP_TURN_LABELS = ("neu", "hap", "exc", "sad", "ang", "neu", "sad", "fru", "ang", "xxx")
IEMOCAP_EVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


class DemoError(Exception):
    """The demo corpus cannot be written (one line naming the folder or tool)."""


@dataclass(frozen=True)
class Utterance:
    """One clip to render: where it goes, what is said, by which voice, how, and its noise/gain seed."""

    corpus: str
    rel_path: str
    text: str
    voice: str
    prosody: Prosody
    label: str
    seed: int


# ------------------------------------------------------------------------------------------- planning
def _prosody(emotion: str, base_pitch: float, rng: np.random.Generator, strength: float = 1.0) -> Prosody:
    rate, volume, pitch, rng_range, gap = EMOTION_PROSODY[emotion]
    n_rate, n_vol, _, n_range, _ = EMOTION_PROSODY["neutral"]
    # Rate, loudness and pitch range carry CONTRAST x the table's difference from neutral, so that
    # speaker-independent emotion recognition from MFCC statistics is learnable on a corpus this small.
    rate = n_rate + (rate - n_rate) * strength * CONTRAST
    volume = n_vol + (volume - n_vol) * strength * CONTRAST
    rng_range = n_range + (rng_range - n_range) * strength * CONTRAST
    return Prosody(
        rate=round(rate * rng.uniform(0.9, 1.1)),
        volume=round(volume * rng.uniform(0.88, 1.12)),
        pitch=round(base_pitch + pitch * strength + rng.normal(0, 4)),
        range=round(rng_range + rng.normal(0, 8)),
        wordgap=round(gap * strength + rng.uniform(0, 1)),
    ).clipped()


def _actor_voice(actor: int, rng: np.random.Generator) -> tuple[str, float]:
    """RAVDESS actors: odd numbers male, even female; a variant and accent each, and a base pitch."""
    male = actor % 2 == 1
    variants = MALE_VARIANTS if male else FEMALE_VARIANTS
    k = (actor - 1) // 2
    accent = ACCENTS[(k // len(variants)) % len(ACCENTS)]
    return f"{accent}+{variants[k % len(variants)]}", float(rng.uniform(38, 52) if male else rng.uniform(48, 62))


def _plan_ravdess(
    rng: np.random.Generator, n_speakers: int, repetitions: int, calm: bool, strong: bool
) -> list[Utterance]:
    codes = [c for c in RAVDESS_EMOTIONS if c != "02" or calm]
    plan: list[Utterance] = []
    for actor in range(1, n_speakers + 1):
        voice, base = _actor_voice(actor, rng)
        for code in codes:
            name, label = RAVDESS_EMOTIONS[code]
            emotion = "calm" if name == "calm" else label
            intensities = ["01", "02"] if strong and code != "01" else ["01"]
            for intensity in intensities:
                for statement, text in RAVDESS_STATEMENTS.items():
                    for rep in range(1, repetitions + 1):
                        stem = f"03-01-{code}-{intensity}-{statement}-{rep:02d}-{actor:02d}"
                        plan.append(Utterance(
                            corpus="RAVDESS", rel_path=f"Actor_{actor:02d}/{stem}.wav", text=text, voice=voice,
                            prosody=_prosody(emotion, base, rng, 1.5 if intensity == "02" else 1.0),
                            label=label, seed=int(rng.integers(2**31)),
                        ))
    return plan


def _curly(text: str) -> str:
    return text.replace("'", "\u2019")


def _plan_meld(
    rng: np.random.Generator, dialogues: tuple[int, int, int], turns: tuple[int, int]
) -> tuple[list[Utterance], list[dict]]:
    """Dialogues of several turns between 2-3 friends; each has a mood that most emotional turns share."""
    cast = sorted(MELD_CAST)
    moods = [e for e in EMOTIONS if e != "neutral"]
    plan: list[Utterance] = []
    rows: list[dict] = []
    for split, n_dialogues in zip(MELD_SPLITS, dialogues, strict=True):
        order = list(rng.permutation(moods))
        for dia in range(n_dialogues):
            mood = order[dia % len(order)]
            people = [cast[i] for i in rng.choice(len(cast), size=int(rng.integers(2, 4)), replace=False)]
            season, episode = int(rng.integers(1, 10)), int(rng.integers(1, 25))
            start = float(rng.uniform(30, 1200))
            last = None
            for utt in range(int(rng.integers(turns[0], turns[1] + 1))):
                speaker = str(rng.choice([p for p in people if p != last]))
                last = speaker
                draw = rng.random()
                emotion = mood if draw < 0.5 else "neutral" if draw < 0.8 else str(rng.choice(EMOTIONS))
                text = f"{rng.choice(SENTENCES[emotion])} {rng.choice(FOLLOW_UPS)}".strip()
                sentiment = SENTIMENT.get(emotion) or ("positive" if rng.random() < 0.6 else "negative")
                voice, base = MELD_CAST[speaker]
                rel = f"{MELD_SPLITS[split][1]}/dia{dia}_utt{utt}.mp4"
                plan.append(Utterance(
                    corpus="MELD", rel_path=rel, text=_curly(text), voice=voice,
                    prosody=_prosody(emotion, base + rng.normal(0, 2), rng), label=emotion,
                    seed=int(rng.integers(2**31)),
                ))
                rows.append({
                    "split": split, "rel_path": rel, "Utterance": _curly(text), "Speaker": speaker,
                    "Emotion": emotion, "Sentiment": sentiment, "Dialogue_ID": dia, "Utterance_ID": utt,
                    "Season": season, "Episode": episode, "gap": float(rng.uniform(0.2, 1.5)),
                    "start": start if utt == 0 else None,
                })
    return plan, rows


def _iemocap_dialog(session: int) -> str:
    """Odd sessions an improvisation led by the woman, even ones a script led by the man (the letter in
    `Ses01F` is the dialog's, not the speaker's)."""
    return f"Ses{session:02d}F_impro01" if session % 2 else f"Ses{session:02d}M_script01_1"


def _plan_iemocap(rng: np.random.Generator, turns_per_speaker: int) -> tuple[list[Utterance], list[dict]]:
    """Five sessions, one dialog each between a woman (F) and a man (M) taking turns; each speaker's labels are a
    shuffle of the first `turns_per_speaker` of IEMOCAP_TURN_LABELS."""
    plan: list[Utterance] = []
    rows: list[dict] = []
    for session in range(1, 6):
        dialog = _iemocap_dialog(session)
        accent = ACCENTS[(session - 1) % len(ACCENTS)]
        voices = {
            "F": (f"{accent}+{FEMALE_VARIANTS[session % len(FEMALE_VARIANTS)]}", float(rng.uniform(50, 62))),
            "M": (f"{accent}+{MALE_VARIANTS[session % len(MALE_VARIANTS)]}", float(rng.uniform(38, 50))),
        }
        labels = {who: list(rng.permutation(IEMOCAP_TURN_LABELS[:turns_per_speaker])) for who in ("F", "M")}
        first = dialog[5]
        order = [first if i % 2 == 0 else ("M" if first == "F" else "F") for i in range(2 * turns_per_speaker)]
        count = {"F": 0, "M": 0}
        for who in order:
            label = str(labels[who][count[who]])
            turn = f"{dialog}_{who}{count[who]:03d}"
            count[who] += 1
            emotion, strength, category, vad = IEMOCAP_LABELS[label]
            voice, base = voices[who]
            text = str(rng.choice(SENTENCES[emotion]))
            rel = f"Session{session}/sentences/wav/{dialog}/{turn}.wav"
            plan.append(Utterance(
                corpus="IEMOCAP", rel_path=rel, text=text, voice=voice,
                prosody=_prosody(emotion, base, rng, strength), label=label, seed=int(rng.integers(2**31)),
            ))
            rows.append({
                "session": session, "dialog": dialog, "turn": turn, "rel_path": rel, "text": text, "label": label,
                "category": category, "vad": tuple(float(np.clip(v + rng.choice([-0.5, 0.0, 0.5]), 1, 5)) for v in vad),
                "gap": float(rng.uniform(0.2, 1.2)),
            })
    return plan, rows


# ---------------------------------------------------------------------------------------------- ratings
RATINGS_FILE = ".mer_demo_ratings.csv"
RATING_SCALE = (1.0, 5.0)
AROUSAL_NOISE = 0.25
_MELD_MANIFEST_SPLIT = {"train_splits": "train", "dev_splits_complete": "val", "output_repeated_splits_test": "test"}


def prosody_arousal(prosody: Prosody, seed: int) -> float:
    """A clip's arousal on the 1-5 scale from its (jittered, clipped) prosody: see the module docstring."""
    noise = np.random.default_rng([seed, 0xA120]).normal(0.0, AROUSAL_NOISE)  # own stream: the plan is untouched
    value = (3.0 + 1.0 * (prosody.rate - 165) / 64 + 0.7 * (prosody.volume - 60) / 62
             + 0.3 * (prosody.range - 45) / 55 + noise)
    return round(float(np.clip(value, *RATING_SCALE)), 4)


def _manifest_id(u: Utterance) -> str:
    """The id the builder gives this clip (Contract 1): `RAVDESS/Actor_NN/<stem>`, `MELD/<split>/dia<D>_utt<U>`."""
    stem = u.rel_path.rsplit(".", 1)[0]
    if u.corpus == "MELD":
        folder, name = stem.split("/", 1)
        return f"MELD/{_MELD_MANIFEST_SPLIT[folder]}/{name}"
    return f"{u.corpus}/{stem}"


def _write_ratings(corpus_dir: Path, utterances: list[Utterance]) -> None:
    lines = ["id,arousal\n", *(f"{_manifest_id(u)},{prosody_arousal(u.prosody, u.seed):.4f}\n" for u in utterances)]
    tmp = corpus_dir / f".{RATINGS_FILE}.tmp"
    tmp.write_text("".join(lines), encoding="utf-8", newline="\n")
    os.replace(tmp, corpus_dir / RATINGS_FILE)


def add_demo_ratings(manifest: Path, raw_root: Path, out: Path | None = None) -> dict[str, int]:
    """Copy the demo's arousal ratings (`raw_root/<corpus>/.mer_demo_ratings.csv`) into the manifest's `arousal`
    field, matched by id; write the result to `out` (default: over `manifest`, atomically). Rows without a rating
    (an injected fault, another corpus) keep theirs. Returns {"rows": n, "rated": n}. DemoError when no corpus
    under `raw_root` has a ratings file."""
    ratings: dict[str, float] = {}
    for path in sorted(Path(raw_root).glob(f"*/{RATINGS_FILE}")):
        with open(path, encoding="utf-8", newline="") as fh:
            ratings.update({row["id"]: float(row["arousal"]) for row in csv.DictReader(fh)})
    if not ratings:
        raise DemoError(f"{raw_root}: no {RATINGS_FILE} in any corpus folder (regenerate with make-demo)")
    rows = [json.loads(line) for line in Path(manifest).read_text(encoding="utf-8").splitlines() if line.strip()]
    rated = 0
    for row in rows:
        if row.get("id") in ratings:
            row["arousal"] = ratings[row["id"]]
            rated += 1
    target = Path(out or manifest)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8", newline="\n")
    os.replace(tmp, target)
    return {"rows": len(rows), "rated": rated}


# ------------------------------------------------------------------------------------------ rendering
def _finish(samples: np.ndarray, rate: int, seed: int, corpus: str) -> np.ndarray:
    """Pad with room-tone silence, apply a random recording gain and a noise floor; float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = samples.astype(np.float32) / 32768.0
    lead, tail = (rng.uniform(0.3, 0.8, size=2) if corpus == "RAVDESS" else rng.uniform(0.05, 0.3, size=2))
    x = np.concatenate([np.zeros(int(lead * rate), np.float32), x, np.zeros(int(tail * rate), np.float32)])
    x *= np.float32(10 ** (rng.uniform(-1.5, 1.5) / 20))
    noise_db = rng.uniform(-62, -55) if corpus == "RAVDESS" else rng.uniform(-50, -42)
    x += rng.standard_normal(x.size).astype(np.float32) * np.float32(10 ** (noise_db / 20))
    peak = float(np.abs(x).max())
    if peak > 0.98:  # the recording level is set so that nothing clips
        x *= np.float32(0.98 / peak)
    return x


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.round(x * 32767.0).astype(np.int16)


def _write_wav(path: Path, audio: np.ndarray, rate: int = OUT_RATE) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, _to_int16(audio), rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def _write_mp4(path: Path, audio48: np.ndarray) -> None:
    """AAC in MP4, 48 kHz, 2 channels, with bit-exact flags so that the bytes repeat."""
    stereo = np.repeat(_to_int16(audio48)[:, None], 2, axis=1)
    tmp = path.with_name(f".{path.name}.tmp")
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "s16le", "-ar", str(OUT_RATE), "-ac", "2", "-i", "pipe:0",
        "-c:a", "aac", "-aac_coder", "fast", "-b:a", "96k", "-threads", "1", "-map_metadata", "-1",
        "-fflags", "+bitexact", "-flags:a", "+bitexact", "-f", "mp4", str(tmp),
    ]
    proc = subprocess.run(cmd, input=stereo.tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise DemoError(f"ffmpeg could not write {path.name}: {err[-1] if err else proc.returncode}")
    os.replace(tmp, path)


def _render_group(job: tuple[str, list[Utterance]]) -> list[tuple[str, float]]:
    """Synthesize one speaker's utterances in this (fresh) process and write them; return (path, seconds)."""
    from mer_builder.tts import engine

    root, utterances = job
    tts = engine()
    done = []
    for u in utterances:
        tts.seed(u.seed)
        speech = tts.synth(u.text, u.voice, u.prosody)
        if speech.size < tts.sample_rate // 10:
            raise DemoError(f"espeak-ng produced no speech for {u.rel_path}")
        audio = _finish(speech, tts.sample_rate, u.seed, u.corpus)
        rate = IEMOCAP_RATE if u.corpus == "IEMOCAP" else OUT_RATE
        audio = soxr.resample(audio, tts.sample_rate, rate, quality="HQ").astype(np.float32)
        path = Path(root) / u.corpus / u.rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if u.corpus == "MELD":
            _write_mp4(path, audio)
        else:
            _write_wav(path, audio, rate)
        done.append((u.rel_path, audio.size / rate))
    return done


# -------------------------------------------------------------------------------------------- outputs
def _clock(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def _write_meld_csvs(meld: Path, rows: list[dict], durations: dict[str, float], cp1252_dev: bool) -> None:
    clock = 0.0
    for split, (csv_name, _) in MELD_SPLITS.items():
        buf = io.StringIO()
        writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(MELD_HEADER)
        for sr_no, row in enumerate((r for r in rows if r["split"] == split), start=1):
            clock = row["start"] if row["start"] is not None else clock + row["gap"]
            end = clock + durations[row["rel_path"]]
            writer.writerow([
                sr_no, row["Utterance"], row["Speaker"], row["Emotion"], row["Sentiment"], row["Dialogue_ID"],
                row["Utterance_ID"], row["Season"], row["Episode"], _clock(clock), _clock(end),
            ])
            clock = end
        encoding = "cp1252" if (cp1252_dev and split == "dev") else "utf-8"
        tmp = meld / f".{csv_name}.tmp"
        tmp.write_bytes(buf.getvalue().encode(encoding))
        os.replace(tmp, meld / csv_name)


def _write_iemocap_texts(iemocap: Path, rows: list[dict], durations: dict[str, float]) -> None:
    """Per dialog: `dialog/EmoEvaluation/{dialog}.txt` and `dialog/transcriptions/{dialog}.txt`, times in seconds
    from the dialog's start, in the real line formats."""
    by_dialog: dict[tuple[int, str], list[dict]] = {}
    for row in rows:
        by_dialog.setdefault((row["session"], row["dialog"]), []).append(row)
    for (session, dialog), turns in by_dialog.items():
        evals, trans, clock = [IEMOCAP_EVAL_HEADER], [], 2.0 + turns[0]["gap"] * 5
        for row in turns:
            start, end = clock, clock + durations[row["rel_path"]]
            clock = end + row["gap"]
            v, a, d = row["vad"]
            evals.append(f"[{start:.4f} - {end:.4f}]\t{row['turn']}\t{row['label']}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n")
            evals.extend(f"C-E{k}:\t{row['category']};\t()\n" for k in (1, 2, 4))
            evals.append(f"A-E1:\tval {round(v)}; act {round(a)}; dom  {round(d)};\t()\n\n")
            trans.append(f"{row['turn']} [{start:08.4f}-{end:08.4f}]: {row['text']}\n")
        trans.append(f"{dialog}_MXX0 [{clock:08.4f}-{clock + 0.8:08.4f}]: Okay.\n")  # a turn without audio
        base = iemocap / f"Session{session}" / "dialog"
        for folder, lines in (("EmoEvaluation", evals), ("transcriptions", trans)):
            (base / folder).mkdir(parents=True, exist_ok=True)
            tmp = base / folder / f".{dialog}.txt.tmp"
            tmp.write_text("".join(lines), encoding="utf-8", newline="\n")
            os.replace(tmp, base / folder / f"{dialog}.txt")


def _inject_faults(root: Path, rows: list[dict]) -> list[str]:
    """The faults real copies have (DATASETS.md), so that a build over the demo exercises them."""
    faults = []
    meld = root / "MELD"
    train = [r for r in rows if r["split"] == "train"]
    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    if train:
        bad = meld / train[len(train) // 2]["rel_path"]
        bad.write_bytes(bad.read_bytes()[:64])
        faults.append(f"MELD/{train[len(train) // 2]['rel_path']}: truncated (corrupt clip)")
        last = train[-1]
        extra = f"train_splits/dia{last['Dialogue_ID']}_utt{last['Utterance_ID'] + 1}.mp4"
        shutil.copyfile(meld / last["rel_path"], meld / extra)
        faults.append(f"MELD/{extra}: clip without a CSV row")
    if dev:
        (meld / dev[-1]["rel_path"]).unlink()
        faults.append(f"MELD/{dev[-1]['rel_path']}: missing clip (the CSV row stays)")
        faults.append("MELD/dev_sent_emo.csv: cp1252-encoded")
    if len(test) >= 2:
        for row, keep_plain in ((test[0], False), (test[1], True)):
            plain = meld / row["rel_path"]
            prefixed = plain.with_name("final_videos_test" + plain.name)
            shutil.copyfile(plain, prefixed)
            if not keep_plain:
                plain.unlink()
            faults.append(f"MELD/{prefixed.relative_to(meld)}: final_videos_test name"
                          + (" beside a plain copy" if keep_plain else ""))
    song = root / "RAVDESS" / "Actor_01" / "03-02-03-01-01-01-01.wav"
    speech = sorted((root / "RAVDESS" / "Actor_01").glob("03-01-03-*.wav"))
    if speech:
        shutil.copyfile(speech[0], song)
        faults.append("RAVDESS/Actor_01/03-02-03-01-01-01-01.wav: a song file (vocal channel 02)")
    return faults


def _place(staging: Path, out: Path, name: str) -> None:
    """Move a finished corpus into `out`, replacing only an earlier demo corpus, never real data."""
    final = out / name
    if final.exists():
        if not (final / DEMO_MARKER).exists():
            raise DemoError(f"{final} exists and is not a demo corpus: refusing to overwrite it")
        shutil.rmtree(final)
    os.replace(staging / name, final)


def make_demo(
    out: Path,
    *,
    seed: int = 0,
    n_speakers: int = 6,
    repetitions: int = 2,
    calm: bool = False,
    strong_intensity: bool = False,
    meld_dialogues: tuple[int, int, int] = (16, 4, 6),
    meld_turns: tuple[int, int] = (4, 8),
    faults: bool = False,
    iemocap: bool = False,
    iemocap_turns: int = 8,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Generate `out/RAVDESS` and `out/MELD` in the real layouts; return a summary (counts, paths, seconds).

    RAVDESS: `n_speakers` actors (odd male, even female) x 7 emotions (+ calm) x 2 statements x
    `repetitions` (x 2 intensities with `strong_intensity`). MELD: `meld_dialogues` (train, dev, test)
    dialogues of `meld_turns` turns among six speakers. `faults` adds the known faults of real copies
    (a corrupt and a missing clip, a clip without a row, a cp1252 CSV, `final_videos_test` names, a song
    file). `iemocap` adds `out/IEMOCAP`: five sessions x two speakers x `iemocap_turns` turns each (16 kHz WAVs,
    EmoEvaluation and transcription files); the RAVDESS and MELD files do not change with it. The same seed and
    settings give byte-identical files.
    """
    started = time.perf_counter()
    if n_speakers < 1 or n_speakers > 24:
        raise DemoError(f"n_speakers must be between 1 and 24 (RAVDESS has 24 actors), got {n_speakers}")
    if repetitions < 1 or repetitions > 99:
        raise DemoError(f"repetitions must be between 1 and 99, got {repetitions}")
    if len(meld_dialogues) != 3 or min(meld_dialogues) < 0:
        raise DemoError(f"meld_dialogues must be three counts (train, dev, test), got {meld_dialogues}")
    if not 1 <= meld_turns[0] <= meld_turns[1]:
        raise DemoError(f"meld_turns must be (min, max) with 1 <= min <= max, got {meld_turns}")
    if iemocap and not 1 <= iemocap_turns <= len(IEMOCAP_TURN_LABELS):
        raise DemoError(f"iemocap_turns must be between 1 and {len(IEMOCAP_TURN_LABELS)}, got {iemocap_turns}")
    corpora = ("RAVDESS", "MELD", "IEMOCAP") if iemocap else ("RAVDESS", "MELD")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out} is a file, expected a folder")
    for name in corpora:
        if (out / name).exists() and not (out / name / DEMO_MARKER).exists():
            raise DemoError(f"{out / name} exists and is not a demo corpus: refusing to overwrite it")
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    ravdess = _plan_ravdess(rng, n_speakers, repetitions, calm, strong_intensity)
    meld, rows = _plan_meld(rng, meld_dialogues, meld_turns)
    iemo, iemo_rows = _plan_iemocap(rng, iemocap_turns) if iemocap else ([], [])  # drawn last: RAVDESS/MELD unchanged
    groups: dict[str, list[Utterance]] = {}
    for u in ravdess:
        groups.setdefault(f"RAVDESS/{u.rel_path.split('/')[0]}", []).append(u)
    for u, row in zip(meld, rows, strict=True):
        groups.setdefault(f"MELD/{row['Speaker']}", []).append(u)
    for u in iemo:  # one group per session (two voices): fewer fresh processes
        groups.setdefault(f"IEMOCAP/{u.rel_path.split('/')[0]}", []).append(u)

    staging = Path(tempfile.mkdtemp(prefix=".demo.partial-", dir=out))
    try:
        for name in corpora:
            (staging / name).mkdir()
        durations: dict[str, float] = {}
        jobs = [(str(staging), groups[key]) for key in sorted(groups)]
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        ctx = multiprocessing.get_context("spawn")  # fresh espeak-ng state per group: see module docstring
        with ctx.Pool(n_workers, maxtasksperchild=1) as pool, tqdm(
            total=len(ravdess) + len(meld) + len(iemo), desc="demo corpus", unit="clip", disable=not progress
        ) as bar:
            for done in pool.imap_unordered(_render_group, jobs, chunksize=1):
                durations.update(done)
                bar.update(len(done))
        _write_meld_csvs(staging / "MELD", rows, durations, cp1252_dev=faults)
        if iemocap:
            _write_iemocap_texts(staging / "IEMOCAP", iemo_rows, durations)
        for name, planned in (("RAVDESS", ravdess), ("MELD", meld)):
            _write_ratings(staging / name, planned)
        injected = _inject_faults(staging, rows) if faults else []
        for name in corpora:
            stamp = {"generator": "mer_builder.demo", "seed": seed, "corpus": name}
            (staging / name / DEMO_MARKER).write_text(json.dumps(stamp) + "\n", encoding="utf-8")
            _place(staging, out, name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    rav_count = Counter(RAVDESS_EMOTIONS[Path(u.rel_path).stem.split("-")[2]][0] for u in ravdess)
    return {
        "out": str(out),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 2),
        "corpora": {
            "RAVDESS": {
                "path": str(out / "RAVDESS"),
                "clips": len(ravdess),
                "speakers": n_speakers,
                "by_emotion": dict(sorted(rav_count.items())),
                "seconds_of_audio": round(sum(durations[u.rel_path] for u in ravdess), 1),
            },
            "MELD": {
                "path": str(out / "MELD"),
                "clips": len(meld),
                "dialogues": dict(zip(MELD_SPLITS, meld_dialogues, strict=True)),
                "by_split": dict(Counter(r["split"] for r in rows)),
                "by_emotion": dict(sorted(Counter(r["Emotion"] for r in rows).items())),
                "speakers": sorted({r["Speaker"] for r in rows}),
                "seconds_of_audio": round(sum(durations[u.rel_path] for u in meld), 1),
            },
            **({"IEMOCAP": {
                "path": str(out / "IEMOCAP"),
                "clips": len(iemo),
                "sessions": 5,
                "speakers": sorted({f"Ses{r['session']:02d}_{r['turn'].rsplit('_', 1)[1][0]}" for r in iemo_rows}),
                "by_label": dict(sorted(Counter(r["label"] for r in iemo_rows).items())),
                "seconds_of_audio": round(sum(durations[u.rel_path] for u in iemo), 1),
            }} if iemocap else {}),
        },
        "faults": injected,
        "prosody": {k: dict(zip(("rate", "volume", "pitch_offset", "range", "wordgap"), v, strict=True))
                    for k, v in EMOTION_PROSODY.items()},
    }

