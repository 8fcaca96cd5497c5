"""The classifiers' batch write on the real PostgreSQL: one round trip, the same guarantees as a
transaction of two statements (first answer only, redeliveries counted, three classifiers racing
on the same new images)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from app.core.errors import ServiceUnavailable
from app.storage.database import Database, ImageProgress, PredictionRow

pytestmark = pytest.mark.integration

CLASSIFIERS = ("fast", "balanced", "accurate")


def _progress(image_id, version: str) -> ImageProgress:
    now = datetime.now(UTC)
    return ImageProgress(image_id, now, now, now, False, version)


def _row(image_id, classifier: str, version: str, p: float = 0.75) -> PredictionRow:
    return PredictionRow(image_id, classifier, version, "cat", p, [p, 1 - p], 0.5)


async def _rows(db: Database, ids) -> list:
    return await db.pool.fetch(
        "SELECT image_id, classifier, model_version, probabilities, attempts FROM predictions "
        "WHERE image_id = ANY($1::uuid[]) ORDER BY image_id, classifier, model_version", list(ids))


async def test_rows_progress_and_redelivery(stack):
    ids = sorted(uuid.uuid4() for _ in range(4))
    async with Database(stack) as db:
        rows = [_row(i, "fast", "v1", 0.5 + k / 10) for k, i in enumerate(ids)]
        assert await db.write_predictions([_progress(i, "v1") for i in ids], rows, first_answer_only=True) == 4
        stored = await _rows(db, ids)
        # each row keeps its own slice of the flat probabilities
        for k, r in enumerate(stored):
            assert list(r["probabilities"]) == pytest.approx([0.5 + k / 10, 0.5 - k / 10])
        images = await db.pool.fetch("SELECT bundle_version, extract_started_at FROM images "
                                     "WHERE image_id = ANY($1::uuid[])", ids)
        assert len(images) == 4 and all(r["bundle_version"] == "v1" and r["extract_started_at"] for r in images)
        # a redelivered batch, with a copy inside it: nothing new, each row's run counted once
        again = [*rows, rows[0]]
        assert await db.write_predictions([_progress(i, "v1") for i in [*ids, ids[0]]], again,
                                          first_answer_only=True) == 0
        assert [r["attempts"] for r in await _rows(db, ids)] == [2, 2, 2, 2]


async def test_first_answer_only_and_shadow_rows(stack):
    image = uuid.uuid4()
    async with Database(stack) as db:
        assert await db.write_predictions([_progress(image, "v1")], [_row(image, "fast", "v1")], True) == 1
        # a worker restarted on v2 gets the message again: the image stays answered by v1
        assert await db.write_predictions([_progress(image, "v2")], [_row(image, "balanced", "v2")], True) == 0
        assert await db.write_predictions([_progress(image, "v2")], [_row(image, "balanced", "v1")], True) == 1
        # a shadow bundle's rows (no progress, not first-answer-only) are stored beside them
        assert await db.write_predictions([], [_row(image, "fast", "shadow")], False) == 1
        assert await db.pool.fetchval("SELECT bundle_version FROM images WHERE image_id = $1", image) == "v1"
        assert {(r["classifier"], r["model_version"]) for r in await _rows(db, [image])} == {
            ("fast", "v1"), ("balanced", "v1"), ("fast", "shadow")}
        assert await db.write_predictions([], [], False) == 0


async def test_three_classifiers_racing_on_new_images_lose_no_row(stack):
    """The three classifiers write the same brand-new images at the same moment: whichever
    commits first sets the image's bundle, and the other two must see it (a statement reading a
    snapshot older than that commit would drop their rows)."""
    for _ in range(5):
        ids = [uuid.uuid4() for _ in range(40)]
        async with Database(stack) as db:
            inserted = await asyncio.gather(*(
                db.write_predictions([_progress(i, "v1") for i in ids], [_row(i, name, "v1") for i in ids],
                                     first_answer_only=True)
                for name in CLASSIFIERS))
            assert inserted == [40, 40, 40]
            assert len(await _rows(db, ids)) == 120


async def test_a_schema_older_than_the_worker_is_an_outage_not_a_poison_message(stack):
    async with Database(stack) as db, db.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("ALTER FUNCTION imgstream_write_predictions RENAME TO imgstream_write_predictions_hidden")
            with pytest.raises(ServiceUnavailable) as err:
                await Database.write_predictions(_OneConnection(conn), [], [_row(uuid.uuid4(), "fast", "v1")])
            assert err.value.code == "schema_behind"
        finally:
            await tx.rollback()


class _OneConnection:
    """``Database`` whose pool is one connection (inside the test's transaction)."""

    def __init__(self, conn) -> None:
        self.pool = conn
