"""The extractor splits a batch into side-by-side ONNX calls without losing or reordering images,
and keeps a batch too small to split whole (it then runs on every core)."""

import pytest

from agents.extractor import split_chunks


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16, 17])
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_chunks_cover_the_batch_in_order_near_equal_and_never_tiny(n, parts):
    items = list(range(n))
    chunks = split_chunks(items, parts)
    assert [x for c in chunks for x in c] == items
    assert len(chunks) == max(1, min(parts, n // 2))
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1
    if len(chunks) > 1:
        assert min(map(len, chunks)) >= 2


def test_a_single_image_or_an_empty_batch_is_not_split():
    assert split_chunks(["a"], 2) == [["a"]]
    assert split_chunks(["a", "b", "c"], 2) == [["a", "b", "c"]]
    assert split_chunks([], 2) == []
