"""LabelPolicy: documented defaults, CLI option parsing and its one-line errors, describe()."""

from __future__ import annotations

import dataclasses

import pytest

from mer_builder.prepare.policy import LabelPolicy


def test_defaults_and_describe() -> None:
    policy = LabelPolicy()
    assert policy.describe() == {
        "ravdess.calm": "neutral",
        "mead.contempt": "drop",
        "emovdb.sleepy": "drop",
        "emodb.boredom": "drop",
        "iemocap.fru": "drop",
        "iemocap.oth": "drop",
        "iemocap.xxx": "drop",
        "iemocap": "7class",
        "msppodcast.contempt": "drop",
        "msppodcast.other": "drop",
        "msppodcast.noagreement": "drop",
    }
    assert policy.target("ravdess_calm") == "neutral"
    assert policy.target("mead_contempt") is None


def test_from_options_any_spelling() -> None:
    policy = LabelPolicy.from_options([
        "ravdess.calm=drop", "MEAD.contempt = Disgust", "EmoV-DB.sleepy=neutral", "emodb_boredom=neutral",
        "iemocap.oth=surprise",
    ])
    assert (policy.ravdess_calm, policy.mead_contempt, policy.emovdb_sleepy, policy.emodb_boredom,
            policy.iemocap_oth, policy.iemocap_preset) == ("drop", "disgust", "neutral", "neutral", "surprise",
                                                           "7class")
    assert LabelPolicy.from_options(["iemocap=4class"]).iemocap_preset == "4class"
    assert LabelPolicy.from_options(["iemocap.preset=4-class"]).iemocap_preset == "4class"
    base = LabelPolicy(ravdess_calm="drop")
    assert LabelPolicy.from_options(["emodb.boredom=neutral"], base=base).ravdess_calm == "drop"
    assert LabelPolicy.from_options([]) == LabelPolicy()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("ravdess.calm=sad", "policy option 'ravdess.calm=sad': 'sad' is not valid for ravdess.calm "
                             "(expected one of: neutral, drop)"),
        ("ravdess.happy=joy", "policy option 'ravdess.happy=joy': unknown key 'ravdess.happy' (valid keys: "
                              "ravdess.calm, mead.contempt, emovdb.sleepy, emodb.boredom, iemocap.fru, iemocap.oth, "
                              "iemocap.xxx, iemocap, msppodcast.contempt, msppodcast.other, "
                              "msppodcast.noagreement)"),
        ("ravdess.calm", "policy option 'ravdess.calm' is not KEY=VALUE (valid keys: ravdess.calm,"),
        ("iemocap=5class", "'5class' is not valid for iemocap (expected one of: 7class, 4class)"),
        ("iemocap.fru=annoyed", "(expected one of: drop, anger, disgust, fear, joy, sadness, surprise, neutral)"),
    ],
)
def test_bad_options_are_one_line_errors(option: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        LabelPolicy.from_options([option])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_four_class_cannot_keep_fru() -> None:
    with pytest.raises(ValueError, match=r"iemocap.fru=anger conflicts with iemocap=4class"):
        LabelPolicy.from_options(["iemocap=4class", "iemocap.fru=anger"])
    with pytest.raises(ValueError, match=r"policy ravdess.calm='joy' is not valid"):
        LabelPolicy(ravdess_calm="joy")


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LabelPolicy().ravdess_calm = "drop"  # type: ignore[misc]
