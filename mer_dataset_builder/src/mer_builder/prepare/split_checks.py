"""Warnings about splits too small to score on: a split with fewer than `MIN_SPEAKERS` speakers, or a val/test
split without a class that the train split has (a 10-speaker corpus split 0.8/0.1/0.1 gives 8/1/1 speakers).

Reads only the counts gathered while the manifest was written (`ManifestStats`), per dataset. Speakers named
`<DATASET>/unknown` (items placed one by one) are not counted as speakers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mer_builder.labels import EMOTIONS_7
from mer_builder.prepare.split_speakers import SPLITS, is_unknown_speaker

if TYPE_CHECKING:
    from mer_builder.prepare.build_manifest import ManifestStats

MIN_SPEAKERS = 2
CV_HINT = ("a score on so few speakers (or without a class) is noisy: prefer cross-validation over speaker folds "
           "(views that select speakers with speaker_regex, one per fold, as scripts/emodb_cv.py does)")


def split_warnings(stats: ManifestStats, min_speakers: int = MIN_SPEAKERS) -> list[str]:
    """One line per dataset whose splits are too small (see the module docstring), else nothing."""
    lines = []
    for ds in sorted(stats.counts):
        by_split = stats.counts[ds]
        train_labels = {lab for lab, n in by_split.get("train", {}).items() if n}
        faults = []
        for split in SPLITS:
            if not any(by_split.get(split, {}).values()):
                continue  # an empty split is warned about by the splitter
            speakers = [s for s in stats.speakers[ds].get(split, ()) if not is_unknown_speaker(s)]
            parts = []
            if speakers and len(speakers) < min_speakers:
                parts.append(f"{len(speakers)} speaker(s), fewer than {min_speakers}")
            if split != "train":
                have = {lab for lab, n in by_split[split].items() if n}
                missing = [lab for lab in EMOTIONS_7 if lab in train_labels - have]
                if missing:
                    parts.append(f"no {', '.join(missing)} rows (train has them)")
            if parts:
                faults.append(f"{split} has {' and '.join(parts)}")
        if faults:
            lines.append(f"{ds}: {'; '.join(faults)}; {CV_HINT}")
    return lines
