"""Experiment suites as data: the ordered runs that reproduce a paper table (driver: `mer.suites.run`, CLI `python -m mer.cli.suite`).

A `Suite` is an ordered list of `Step`s (plus the data stages it prepares first). A `Step` is one run: its name,
its entry point (`train` = train.py, feature-store models; `train_hf` = train_hf_e2e.py, end-to-end encoders),
its config file in `configs/`, the `--set` overrides that make it this experiment, the views it is evaluated
on, the run whose `best.pt` initialises it (`depends_on`, becomes `train.init_from`) and the corpora it needs.
The driver adds the rest: `run.name`, `run.output_root`, the manifest / feature-store paths, `train.init_from`,
`data.eval_views`, and in the demo profile the tiny encoders and tiny-scale settings of `PROFILE_OVERRIDES`.

Run names follow the report's convention: `paper_*` for the end-to-end paper runs, `_seed<N>` / `_fold<N>` for
the repeats that `collect_results` pools, the config's own `run.name` for the feature-track baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: the corpora of the paper, in the report's order
CORPORA = ("RAVDESS", "CREMA-D", "MELD", "IEMOCAP", "ESD", "EmoV-DB", "MEAD")
#: the corpora `mer_builder make-demo --iemocap` generates (what the demo profile can run)
DEMO_CORPORA = ("RAVDESS", "MELD", "IEMOCAP")
DEFAULT_SEEDS = (0, 1, 2)
IEMOCAP_SESSIONS = (1, 2, 3, 4, 5)
MODES = ("A", "T", "AT")
CONTEXTS = (0, 3, 7, 9)

Entry = Literal["train", "train_hf"]
Stage = Literal["dataset", "features"]


@dataclass(frozen=True)
class Step:
    """One run of a suite. `overrides` are `--set KEY=VALUE` items (YAML values) applied to `config`."""

    name: str
    entry: Entry
    config: str
    overrides: tuple[str, ...] = ()
    eval_views: tuple[str, ...] = ("testA", "testB")
    depends_on: str | None = None
    requires: tuple[str, ...] = ()  # corpora that must be in the manifest (else the run is skipped, with why)


@dataclass(frozen=True)
class Suite:
    """An ordered list of runs; `prepare` names the data stages the full profile runs first (the demo profile
    always makes the data it needs)."""

    name: str
    description: str
    steps: tuple[Step, ...]
    prepare: tuple[Stage, ...] = field(default=())


# ----------------------------------------------------------------------------------------------- configs
E2E_STAGE1 = "mer_builder_at_hf_e2e_all_stage1_head_warmup.yaml"
E2E_STAGE2 = "mer_builder_at_hf_e2e_all_stage2_finetune.yaml"
E2E_ALL = "mer_builder_at_hf_e2e_all_v2.yaml"
E2E_IEMOCAP_CV = "mer_builder_at_hf_e2e_iemocap4_cv.yaml"


def meld_ft_config(context: int) -> str:
    return f"mer_builder_at_hf_e2e_meld_ft_ctx{context}_a20.yaml"


BASELINE_CONFIGS = (  # feature track, in the order the report lists them (the last one fine-tunes the one before)
    "mer_builder_at_simple",
    "mer_builder_at_simple_robust",
    "mer_builder_at_simple_robust_balanced",
    "mer_builder_at_simple_robust_moddrop",
    "mer_builder_at_simple_robust_moddrop_ema",
    "mer_builder_at_simple_robust_moddrop_ema_meld_ft",
)

#: settings each profile adds to every run of an entry point (before the user's own --set)
PROFILE_OVERRIDES: dict[str, dict[str, tuple[str, ...]]] = {
    "full": {"train": (), "train_hf": ()},
    "demo": {
        "train": ("data.batch_size=32", "train.epochs=10"),
        "train_hf": (
            "model.hidden_dim=32", "model.fusion.layers=1", "model.fusion.heads=2",
            "data.batch_size=8", "data.eval_batch_size=16", "data.num_workers=0", "data.bucket_batches=4",
            "train.grad_accum=1", "train.epochs=2",
        ),
    },
}


# ------------------------------------------------------------------------------------------------- steps
def _view(name: str, **filters: str) -> tuple[str, ...]:
    return tuple(f"data.views.{name}.{key}={value}" for key, value in filters.items())


def paper_core_steps() -> tuple[Step, ...]:
    """Two-stage training on all corpora, the MELD context sweep and modality ablation (both from stage 2), and
    acted-only training evaluated on MELD, then its MELD fine-tune."""
    stage1 = Step("paper_all_stage1", "train_hf", E2E_STAGE1)
    stage2 = Step("paper_all_stage2", "train_hf", E2E_STAGE2, depends_on=stage1.name)
    acted = Step(
        "paper_acted_only", "train_hf", E2E_ALL,
        overrides=(*_view("acted_train", split="train", domain="acted"),
                   *_view("acted_val", split="val", domain="acted"),
                   "data.train_view=acted_train", "data.val_view=acted_val"),
        requires=("MELD",),  # evaluated on MELD (testB) without having seen it
    )
    acted_ft = Step("paper_acted_only_meld_ft", "train_hf", meld_ft_config(0), eval_views=("testB", "testA"),
                    depends_on=acted.name, requires=("MELD",))
    return (stage1, stage2, *meld_ft_steps(), acted, acted_ft)


def meld_ft_steps() -> tuple[Step, ...]:
    """MELD fine-tunes of paper_all_stage2: context 0/3/7/9 turns with 20 s audio, then audio-only, text-only and
    audio+text (no context) for the modality ablation."""
    sweep = tuple(Step(f"paper_meld_ft_ctx{c}_a20", "train_hf", meld_ft_config(c), eval_views=("testB", "testA"),
                       depends_on="paper_all_stage2", requires=("MELD",)) for c in CONTEXTS)
    ablation = tuple(Step(f"paper_meld_ft_{mode}", "train_hf", meld_ft_config(0), overrides=(f"model.mode={mode}",),
                          eval_views=("testB", "testA"), depends_on="paper_all_stage2", requires=("MELD",))
                     for mode in MODES)
    return sweep + ablation


def loco_steps() -> tuple[Step, ...]:
    """Leave one corpus out: train/val on every other corpus; evaluated on all rows of the held-out corpus
    (`heldout`) and on its test split (`heldout_test`, the rows the in-corpus runs are scored on), with the classes
    the held-out corpus (or the training corpora) lack masked from the logits, as `cross_corpus.py` does."""
    steps = []
    for corpus in CORPORA:
        overrides = (
            *_view("loco_train", split="train", exclude_dataset=corpus),
            *_view("loco_val", split="val", exclude_dataset=corpus),
            *_view("heldout", dataset=corpus),
            *_view("heldout_test", split="test", dataset=corpus),
            "data.train_view=loco_train", "data.val_view=loco_val",
            "data.mask_absent_classes=true",  # corpus-aware: classes the held-out corpus lacks are masked
            "data.allow_empty_classes=true",
        )
        steps.append(Step(f"paper_loco_exclude_{corpus}", "train_hf", E2E_ALL, overrides=overrides,
                          eval_views=("heldout", "heldout_test"), requires=(corpus,)))
    return tuple(steps)


def iemocap_fold_overrides(fold: int) -> tuple[str, ...]:
    """The documented fold override of mer_builder_at_hf_e2e_iemocap4_cv.yaml (leave one session out): test on the
    whole held-out session, validate on the female speaker of the next session, train on the other seven speakers."""
    val = fold % len(IEMOCAP_SESSIONS) + 1
    others = "".join(str(s) for s in IEMOCAP_SESSIONS if s != fold)
    return (f"data.views.cv_train.speaker_regex=^IEMOCAP/(?!Ses0{val}_F)Ses0[{others}]_",
            f"data.views.cv_val.speaker_regex=^IEMOCAP/Ses0{val}_F",
            f"data.views.cv_test.speaker_regex=^IEMOCAP/Ses0{fold}_")


def iemocap_cv_steps(seeds: tuple[int, ...] = DEFAULT_SEEDS) -> tuple[Step, ...]:
    """IEMOCAP-4 leave-one-session-out cross-validation: seeds x 5 folds x modes A/T/AT."""
    return tuple(
        Step(f"paper_iemocap4_seed{seed}_fold{fold}_{mode}", "train_hf", E2E_IEMOCAP_CV,
             overrides=(f"run.seed={seed}", f"model.mode={mode}", *iemocap_fold_overrides(fold)),
             eval_views=("cv_test",), requires=("IEMOCAP",))
        for seed in seeds for fold in IEMOCAP_SESSIONS for mode in MODES
    )


def baseline_steps() -> tuple[Step, ...]:
    """The feature-track configs (MFCC + hashed text store): FlexibleAT, RobustAT and its balanced / modality
    dropout / +EMA variants, and the MELD fine-tune of the last one."""
    steps = [Step(name, "train", f"{name}.yaml") for name in BASELINE_CONFIGS[:-1]]
    steps.append(Step(BASELINE_CONFIGS[-1], "train", f"{BASELINE_CONFIGS[-1]}.yaml",
                      depends_on=BASELINE_CONFIGS[-2], requires=("MELD",)))
    return tuple(steps)


def build_suites(seeds: tuple[int, ...] = DEFAULT_SEEDS) -> dict[str, Suite]:
    """Every suite by name; `seeds` are the repeats of the seeded runs (the IEMOCAP cross-validation)."""
    core, meld_ft, loco, cv, baseline = (paper_core_steps(), meld_ft_steps(), loco_steps(), iemocap_cv_steps(seeds),
                                         baseline_steps())
    suites = [
        Suite("run_full_paper_suite", "the paper's whole table: two-stage training on all corpora, MELD context "
              "sweep and modality ablation, acted-only transfer to MELD, leave-one-corpus-out, IEMOCAP-4 "
              "session cross-validation", core + loco + cv),
        Suite("run_paper_experiments", "the core of the paper: two-stage training on all corpora, MELD context "
              "sweep and modality ablation, acted-only transfer to MELD (no LOCO, no cross-validation)", core),
        Suite("run_meld_ft_experiments", "MELD fine-tunes of paper_all_stage2: context sweep and modality ablation",
              meld_ft),
        Suite("run_iemocap4_cv", "IEMOCAP-4 leave-one-session-out cross-validation x seeds x A/T/AT", cv),
        Suite("run_baseline_at", "the feature-track baselines (MFCC + hashed text; FlexibleAT, RobustAT variants, "
              "MELD fine-tune)", baseline),
        Suite("run_full_pipeline", "dataset -> features -> train -> evaluate for the feature track: builder "
              "build, MFCC + hashed-text extraction and memmap, then run_baseline_at", baseline,
              prepare=("dataset", "features")),
    ]
    return {s.name: s for s in suites}


SUITE_NAMES = tuple(build_suites())
