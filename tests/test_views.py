"""Views: each filter, combinations, exact matching, bad filters."""

from __future__ import annotations

import numpy as np
import pytest

from mer.data.views import describe_view, select_rows
from mer.errors import UserError
from mer.schema import ViewConfig


def row(dataset: str, split: str, domain: str, speaker: str | None) -> dict:
    return {"id": f"{dataset}/{speaker}/{split}", "dataset": dataset, "split": split, "domain": domain,
            "speaker": speaker}


META = [
    row("RAVDESS", "train", "acted", "RAVDESS/01"),  # 0
    row("RAVDESS", "test", "acted", "RAVDESS/02"),  # 1
    row("MELD", "train", "conversational", "MELD/Joey"),  # 2
    row("MELD", "test", "conversational", "MELD/Rachel"),  # 3
    row("IEMOCAP", "train", "conversational", "IEMOCAP/Ses01F"),  # 4
    row("IEMOCAP", "val", "conversational", "IEMOCAP/Ses02M"),  # 5
    row("IEMOCAP", "test", "conversational", "IEMOCAP/Ses05F"),  # 6
    row("CREMA-D", "val", "acted", "CREMA-D/1001"),  # 7
    row("CREMA-D", "test", "acted", None),  # 8: no speaker
]


def sel(**kw) -> list[int]:
    out = select_rows(META, ViewConfig(**kw))
    assert out.dtype == np.int64
    return out.tolist()


def test_no_view_and_empty_view_select_everything():
    assert select_rows(META, None).tolist() == list(range(9))
    assert sel() == list(range(9))


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"split": "test"}, [1, 3, 6, 8]),
        ({"split": ["val", "test"]}, [1, 3, 5, 6, 7, 8]),
        ({"dataset": "MELD"}, [2, 3]),
        ({"dataset": ["MELD", "CREMA-D"]}, [2, 3, 7, 8]),
        ({"domain": "acted"}, [0, 1, 7, 8]),
        ({"exclude_dataset": "MELD"}, [0, 1, 4, 5, 6, 7, 8]),
        ({"exclude_dataset": ["MELD", "IEMOCAP"]}, [0, 1, 7, 8]),
        ({"speaker_regex": r"^IEMOCAP/Ses0[12]"}, [4, 5]),
        ({"speaker_regex": "F$"}, [4, 6]),  # re.search, rows without a speaker never match
    ],
)
def test_each_filter(kw, expected):
    assert sel(**kw) == expected


def test_combinations():
    # TestA = acted test rows; TestB = MELD test rows
    assert sel(split="test", domain="acted") == [1, 8]
    assert sel(split="test", dataset="MELD") == [3]
    # an IEMOCAP session fold: session 5 held out of training
    assert sel(dataset="IEMOCAP", speaker_regex=r"/Ses0[1-4]") == [4, 5]
    assert sel(dataset="IEMOCAP", speaker_regex=r"/Ses05") == [6]
    assert sel(split=["train", "test"], domain="conversational", exclude_dataset="IEMOCAP") == [2, 3]
    assert sel(dataset="MELD", exclude_dataset="MELD") == []


def test_matching_is_exact():
    assert sel(dataset="MEL") == []
    assert sel(dataset="meld") == []
    assert sel(split="tes") == []
    assert sel(exclude_dataset="RAV") == list(range(9))


def test_invalid_regex_is_a_user_error_naming_it():
    with pytest.raises(UserError, match=r"speaker_regex '\(Ses0\[1' is not a valid regular expression"):
        sel(speaker_regex="(Ses0[1")


def test_wrong_filter_type_is_a_user_error():
    with pytest.raises(UserError, match=r"view filter 'split': expected a string or a list of strings, got 3"):
        sel(split=3)


def test_describe_view():
    assert describe_view(ViewConfig(split="test", dataset=["MELD", "IEMOCAP"])) == "split=test, dataset=[MELD, IEMOCAP]"
    assert describe_view(ViewConfig()) == "no filters"
