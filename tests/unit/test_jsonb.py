"""tgstack.jsonb.loads decodes every document exactly as json.loads does."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgstack.jsonb import loads

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: well beyond 64 bits
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


@given(DOCUMENTS)
def test_any_document_decodes_as_json_loads_decodes_it(document: Any) -> None:
    encoded = json.dumps(document, ensure_ascii=False).encode()

    decoded = loads(encoded)

    assert decoded == json.loads(encoded)
    assert json.dumps(decoded) == json.dumps(json.loads(encoded))  # same types, same digits


@pytest.mark.parametrize(
    "number",
    [
        123456789012345678901234567890,
        -9223372036854775809,  # one below int64
        18446744073709551616,  # one above uint64
    ],
)
def test_integers_beyond_64_bits_stay_exact_integers(number: int) -> None:
    decoded = loads(f'{{"views": {number}}}'.encode())

    assert decoded == {"views": number}
    assert type(decoded["views"]) is int


def test_a_number_too_large_for_a_double_decodes_as_json_loads_does() -> None:
    assert loads(b"[1e400]") == [math.inf]


def test_memoryview_and_text_are_accepted() -> None:
    assert loads(memoryview(b'{"a": [1, 2.5, "\\u00e9"]}')) == {"a": [1, 2.5, "é"]}
    assert loads('{"a": null}') == {"a": None}


def test_invalid_json_raises_json_loads_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(b'{"a": ')
