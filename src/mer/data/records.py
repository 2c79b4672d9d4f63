"""Record definitions shared by every layer above `data`: what of a manifest row travels with a feature.

The builder writes manifest rows (DESIGN.md, Contract 1). A feature store row, a memmap index line and a dataset's
`meta` entry all carry the same subset of those fields, so that views (`mer.data.views`) and tasks
(`mer.data.task`) filter the same way whatever the source.
"""

from __future__ import annotations

# The manifest fields every feature-store row carries (views and tasks filter on these).
CARRIED_FIELDS = ["id", "dataset", "split", "domain", "speaker", "label", "source_label", "dialogue_id", "turn",
                  "gender", "arousal", "valence", "dominance"]
