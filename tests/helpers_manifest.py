"""A tiny generated manifest (Contract 1) with real 16 kHz WAVs, for the end-to-end tests and benchmark.

The audio is learnable: a tone (plus harmonics and noise) whose pitch depends on the label; the transcript holds a
word that names the label. Half the rows are acted (dataset TOYACT, no dialogue), half conversational (dataset
MELD, dialogues of up to four turns), in train/val/test splits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import soundfile as sf

LABELS = ("anger", "joy", "sadness", "neutral")
WORDS = {"anger": "angry", "joy": "happy", "sadness": "sad", "neutral": "okay"}
SR = 16000


def tone(label_index: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A label-pitched tone: f0 = 180 Hz * 1.5^label, two harmonics, a little noise; float32 in [-1, 1]."""
    t = np.arange(int(round(seconds * SR))) / SR
    f0 = 180.0 * 1.5**label_index
    x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(4 * np.pi * f0 * t) + 0.05 * np.sin(6 * np.pi * f0 * t)
    x += 0.02 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def make_tone_manifest(root: str | Path, per_split: dict[str, int] | None = None, labels=LABELS,
                       min_s: float = 0.3, max_s: float = 1.2, seed: int = 0) -> Path:
    """Write `root/meta_manifest.jsonl` and `root/audio/...`; `per_split[split]` rows per label. Returns the path."""
    root = Path(root)
    per_split = per_split or {"train": 8, "val": 3, "test": 3}
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in per_split.items():
        turn, dialogue = 0, 0
        for i in range(n * len(labels)):
            li = i % len(labels)
            label = labels[li]
            acted = i % 2 == 0
            seconds = float(rng.uniform(min_s, max_s))
            if acted:
                dataset, speaker = "TOYACT", f"TOYACT/spk{i % 3}_{split}"
                rid, dia, trn = f"TOYACT/{split}/utt{i:04d}", None, None
            else:
                dataset, speaker = "MELD", f"MELD/{['Joey', 'Rachel'][turn % 2]}"
                rid, dia, trn = f"MELD/{split}/dia{dialogue}_utt{turn}", f"{split}_{dialogue}", turn
                turn += 1
                if turn == 4:
                    turn, dialogue = 0, dialogue + 1
            rel = f"audio/{rid}.wav"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone(li, seconds, rng), SR, subtype="PCM_16")
            rows.append({
                "id": rid, "dataset": dataset, "split": split, "audio_path": rel,
                "duration_s": round(sf.info(str(path)).frames / SR, 6),
                "text": f"i am {WORDS[label]} now", "label": label, "source_label": label[:3],
                "speaker": speaker, "gender": None, "domain": "acted" if acted else "conversational",
                "dialogue_id": dia, "turn": trn, "intensity": None, "valence": None, "arousal": None,
                "dominance": None, "language": "en", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "notes": "",
            })
    manifest = root / "meta_manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest
