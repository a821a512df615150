"""Tables people read: every text column must convert to Arrow, whatever mix of values it holds."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from pages._render import readable_frame


@pytest.mark.parametrize(
    "values",
    [
        [True, None, False],  # a nullable flag such as credit_ledger.support
        [1, None, "x"],
        [["https://a.example/1.png"], None, "text"],
        [{"k": 1}, None, 2.5],
    ],
)
def test_a_text_column_of_mixed_values_converts_to_arrow(values):
    frame = readable_frame(pd.DataFrame({"col": pd.Series(values, dtype=object)}), skip=set())
    pa.Table.from_pandas(frame, preserve_index=False)  # raises ArrowTypeError on a mixed column
    assert frame["col"].iloc[1] == "—"


def test_flags_read_as_words_and_configured_columns_are_left_alone():
    frame = pd.DataFrame(
        {"support": pd.Series([True, False], dtype=object), "raw": pd.Series([True, None], dtype=object)}
    )
    out = readable_frame(frame, skip={"raw"})
    assert list(out["support"]) == ["yes", "no"]
    assert out["raw"].iloc[0] is True
