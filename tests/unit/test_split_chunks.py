"""The extractor splits a batch into side-by-side ONNX calls without losing or reordering images."""

import pytest

from agents.extractor import split_chunks


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 17])
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_chunks_cover_the_batch_in_order_and_near_equal(n, parts):
    items = list(range(n))
    chunks = split_chunks(items, parts)
    assert [x for c in chunks for x in c] == items
    assert len(chunks) == min(parts, n) and all(chunks)
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


def test_no_chunks_for_an_empty_batch():
    assert split_chunks([], 2) == []
