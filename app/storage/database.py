"""PostgreSQL through asyncpg: migrations, the classifiers' idempotent batch upserts, and reads.

Every statement is parameterized. A redelivered Kafka message never makes a second row: the
primary key is (image_id, classifier, model_version) and writes are ``ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from uuid import UUID

import asyncpg

from app.core.errors import ServiceUnavailable
from app.core.security import describe, postgres_ssl
from app.core.settings import Settings

# Errors that mean "PostgreSQL is (going) away", retried by the agents: connection failures, the
# server shutting down under a query (AdminShutdown, CrashShutdown), refusing connections while
# starting, or out of connection slots.
PG_DOWN = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
           asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError)


# Errors that mean "PostgreSQL refuses us": a wrong password or user, or a server that requires TLS
# the client does not offer. Not outages, but just as retryable once the secret or setting is fixed.
PG_REFUSED = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError)


class _Connection(asyncpg.Connection):
    """No reset query when a connection goes back to the pool: asyncpg's default (unlock advisory
    locks, CLOSE ALL, UNLISTEN *, RESET ALL) is a round trip per acquire, and this project never
    takes advisory locks, opens cursors outside a transaction, LISTENs or SETs session state.
    asyncpg still rolls back a transaction left open and drops listeners (``Connection._reset``)."""

    def get_reset_query(self) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class PredictionRow:
    image_id: UUID
    classifier: str
    model_version: str
    label: str
    confidence: float
    probabilities: list[float]
    latency_ms: float


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """An accepted upload: its object, the deployment that accepted it, and its input offset."""

    image_id: UUID
    object_key: str
    sha256: str
    size: int
    content_type: str
    uploaded_at: datetime
    accepted_at: datetime
    deployment: str
    input_partition: int | None = None
    input_offset: int | None = None


@dataclass(frozen=True, slots=True)
class ImageProgress:
    """What a classifier knows of an image's path so far (from the descriptor message)."""

    image_id: UUID
    uploaded_at: datetime | None
    extract_started_at: datetime | None
    extract_finished_at: datetime | None
    extract_cached: bool
    bundle_version: str


def _once_each_by(items: list, key) -> list:
    """``items`` sorted by ``key``, each key once (its first occurrence kept)."""
    first: dict = {}
    for item in items:
        first.setdefault(key(item), item)
    return [first[k] for k in sorted(first)]


def migrations() -> list[tuple[str, str]]:
    folder = resources.files("app.storage") / "migrations"
    return sorted((p.name, p.read_text()) for p in folder.iterdir() if p.name.endswith(".sql"))


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply every migration not yet recorded, each in its own transaction; idempotent."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz DEFAULT now())"
    )
    applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    done = []
    for name, sql in migrations():
        if name in applied:
            continue
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
        done.append(name)
    return done


class Database:
    def __init__(self, settings: Settings, *, min_size: int = 1, max_size: int = 8) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._sizes = (min_size, max_size)
        self._uploads: list[tuple[UploadRecord, asyncio.Future]] = []
        self._uploads_writer: asyncio.Task | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.settings.postgres_dsn.get_secret_value(),
            min_size=self._sizes[0],
            max_size=self._sizes[1],
            command_timeout=10,
            timeout=5,
            connection_class=_Connection,
            ssl=postgres_ssl(self.settings),
        )

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise ServiceUnavailable("database not connected")
        return self._pool

    async def ping(self) -> None:
        try:
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), 5)
        except (*PG_DOWN, *PG_REFUSED) as exc:
            raise ServiceUnavailable(f"database unavailable: {describe(exc)}") from exc

    # --- writes --------------------------------------------------------------------------------
    async def record_upload(self, r: UploadRecord) -> None:
        """Write an accepted upload's row. Group commit: the rows of uploads that arrive while a
        write is on its way go together in the next one (one round trip for all of them), so
        under load the uploads' database cost is per batch, not per image; alone, a row is
        written at once."""
        future = asyncio.get_running_loop().create_future()
        self._uploads.append((r, future))
        if self._uploads_writer is None or self._uploads_writer.done():
            self._uploads_writer = asyncio.create_task(self._write_uploads(), name="record-uploads-batch")
        await future

    async def _write_uploads(self) -> None:
        while self._uploads:
            batch, self._uploads = self._uploads, []
            try:
                await self.record_uploads([r for r, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting upload hears why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():  # a waiter that timed out has cancelled its future
                        future.set_result(None)

    async def record_uploads(self, records: list[UploadRecord]) -> None:
        """Upsert the rows of accepted uploads in one transaction (asyncpg pipelines executemany:
        one round trip)."""
        await self.pool.executemany(
            """INSERT INTO images (image_id, object_key, sha256, size, content_type, uploaded_at, accepted_at,
                                   deployment, input_partition, input_offset)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (image_id) DO UPDATE SET object_key = EXCLUDED.object_key,
                 sha256 = EXCLUDED.sha256, size = EXCLUDED.size, content_type = EXCLUDED.content_type,
                 uploaded_at = COALESCE(images.uploaded_at, EXCLUDED.uploaded_at),
                 accepted_at = EXCLUDED.accepted_at, deployment = EXCLUDED.deployment,
                 input_partition = EXCLUDED.input_partition, input_offset = EXCLUDED.input_offset,
                 updated_at = now()""",
            [(r.image_id, r.object_key, r.sha256, r.size, r.content_type, r.uploaded_at, r.accepted_at,
              r.deployment, r.input_partition, r.input_offset) for r in records],
        )

    async def mark_failed(self, image_id: UUID, reason: str, object_key: str | None = None,
                          sha256: str | None = None, uploaded_at: datetime | None = None) -> None:
        await self.pool.execute(
            """INSERT INTO images (image_id, object_key, sha256, uploaded_at, status, error)
               VALUES ($1, $2, $3, $4, 'failed', $5)
               ON CONFLICT (image_id) DO UPDATE SET status = 'failed', error = EXCLUDED.error, updated_at = now()""",
            image_id, object_key, sha256, uploaded_at, reason[:1000],
        )

    async def write_predictions(self, progress: list[ImageProgress], rows: list[PredictionRow],
                                first_answer_only: bool = False) -> int:
        """Upsert the images' progress and insert predictions in one transaction and one round trip
        (``imgstream_write_predictions``, migration 006). Returns rows inserted.

        A redelivered prediction keeps the first row and counts the run (``attempts``):
        redeliveries are allowed, and measured rather than hidden; copies within one call count
        once. With ``first_answer_only`` (the live classifiers) an image is answered only by the
        bundle recorded for it by its first progress write: a descriptor message redelivered to a
        worker restarted on a newer bundle never gives one upload two answers. Replays (new rows
        for history) pass False."""
        # one lock order across classifiers; each image once, each prediction once
        progress = _once_each_by(progress, lambda p: p.image_id)
        rows = _once_each_by(rows, lambda r: (r.image_id, r.classifier, r.model_version))
        flat: list[float] = []
        first, last = [], []
        for r in rows:
            first.append(len(flat) + 1)
            flat.extend(r.probabilities)
            last.append(len(flat))
        try:
            return await self.pool.fetchval(
                "SELECT imgstream_write_predictions($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                [p.image_id for p in progress], [p.uploaded_at for p in progress],
                [p.extract_started_at for p in progress], [p.extract_finished_at for p in progress],
                [p.extract_cached for p in progress], [p.bundle_version for p in progress],
                [r.image_id for r in rows], [r.classifier for r in rows], [r.model_version for r in rows],
                [r.label for r in rows], [r.confidence for r in rows], flat, first, last,
                [r.latency_ms for r in rows], first_answer_only,
            )
        except asyncpg.exceptions.UndefinedFunctionError as exc:
            # a worker newer than the schema: an outage to wait out (Kafka keeps the batch), not a
            # poison message to dead-letter
            raise ServiceUnavailable("the database schema is older than this worker: run `imgstream init`",
                                     code="schema_behind") from exc

    async def stalled(self, deployment: str, older_than_s: float, committed: dict[int, int],
                      limit: int = 500, max_resends: int = 5) -> list[asyncpg.Record]:
        """The sweeper's work, marked re-sent: accepted images of ``deployment`` still missing
        predictions from some of the three classifiers (for their bundle version) and not failed
        after ``older_than_s`` seconds, not re-sent within that time nor more than ``max_resends``
        times, and whose input offset the extractor's group has committed past (``committed``:
        partition -> committed offset). An image still ahead of its partition's committed offset
        is queued, not lost, and is never re-sent; one without a recorded offset is judged by age."""
        parts, offsets = list(committed), [committed[p] for p in committed]
        return await self.pool.fetch(
            """UPDATE images SET resent_at = now(), resent_count = resent_count + 1
               WHERE image_id IN (
                 SELECT i.image_id FROM images i
                 WHERE i.deployment = $4 AND i.status = 'pending'
                   AND i.accepted_at < now() - make_interval(secs => $1)
                   AND (i.resent_at IS NULL OR i.resent_at < now() - make_interval(secs => $1))
                   AND i.resent_count < $3
                   AND i.object_key IS NOT NULL
                   AND (i.input_offset IS NULL OR EXISTS (
                        SELECT 1 FROM unnest($5::int[], $6::bigint[]) AS c(p, o)
                        WHERE c.p = i.input_partition AND i.input_offset < c.o))
                   AND (SELECT count(DISTINCT p.classifier) FROM predictions p WHERE p.image_id = i.image_id
                          AND (i.bundle_version IS NULL OR p.model_version = i.bundle_version)) < 3
                 ORDER BY i.accepted_at LIMIT $2
                 FOR UPDATE SKIP LOCKED)
               RETURNING image_id, object_key, sha256, size, content_type, uploaded_at""",
            float(older_than_s), limit, max_resends, deployment, parts, offsets,
        )

    async def set_input_offset(self, image_id: UUID, partition: int, offset: int) -> None:
        """Where a re-sent image's event now sits on the input topic."""
        await self.pool.execute("UPDATE images SET input_partition = $2, input_offset = $3 WHERE image_id = $1",
                                image_id, partition, offset)

    # --- reads ---------------------------------------------------------------------------------
    async def get_image(self, image_id: UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM images WHERE image_id = $1", image_id)

    async def get_predictions(self, image_id: UUID, model_version: str | None = None) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT * FROM predictions WHERE image_id = $1 AND ($2::text IS NULL OR model_version = $2)
               ORDER BY classifier, created_at""",
            image_id, model_version,
        )

    async def recent_images(self, limit: int, offset: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT * FROM images ORDER BY uploaded_at DESC NULLS LAST, image_id LIMIT $1 OFFSET $2",
            limit, offset,
        )

    async def predictions_for(self, image_ids: list[UUID]) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT * FROM predictions WHERE image_id = ANY($1::uuid[]) ORDER BY created_at", image_ids
        )

    async def agreement(self, limit: int = 200) -> asyncpg.Record:
        """Among the last ``limit`` images with three predictions: how many got one label from all three."""
        return await self.pool.fetchrow(
            """WITH recent AS (
                 SELECT p.image_id, count(DISTINCT p.label) AS labels FROM predictions p
                 JOIN images i ON i.image_id = p.image_id AND p.model_version = i.bundle_version
                 GROUP BY p.image_id HAVING count(*) = 3
                 ORDER BY max(p.created_at) DESC LIMIT $1)
               SELECT count(*) AS images, count(*) FILTER (WHERE labels = 1) AS unanimous FROM recent""",
            limit,
        )

    async def prediction_stats(self, window_s: int = 300) -> list[asyncpg.Record]:
        """Per classifier over the last window: count and latency percentiles."""
        return await self.pool.fetch(
            """SELECT p.classifier, count(*) AS n,
                      count(*) FILTER (WHERE p.created_at > now() - interval '60 seconds') AS last_minute,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY p.latency_ms) AS p50,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY p.latency_ms) AS p99
               FROM predictions p JOIN images i ON i.image_id = p.image_id AND p.model_version = i.bundle_version
               WHERE p.created_at > now() - make_interval(secs => $1)
               GROUP BY p.classifier ORDER BY p.classifier""",
            float(window_s),
        )

    # --- label feedback and experiments ----------------------------------------------------------
    async def record_feedback(self, image_id: UUID, label: str) -> asyncpg.Record | None:
        """Store an image's label (the last one wins); None for an unknown image."""
        return await self.pool.fetchrow(
            """INSERT INTO feedback (image_id, label)
               SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM images WHERE image_id = $1)
               ON CONFLICT (image_id) DO UPDATE SET label = EXCLUDED.label, received_at = now(),
                 updates = feedback.updates + 1
               RETURNING image_id, label, received_at, updates""",
            image_id, label,
        )

    async def live_accuracy(self, window_s: float, deployment: str) -> list[asyncpg.Record]:
        """Per (bundle, classifier): the deployment's labelled images whose label arrived within
        the window, and how many of them the classifier got right."""
        return await self.pool.fetch(
            """SELECT p.model_version, p.classifier, count(*) AS images,
                      count(*) FILTER (WHERE p.label = f.label) AS correct
               FROM feedback f JOIN images i ON i.image_id = f.image_id AND i.deployment = $2
               JOIN predictions p ON p.image_id = f.image_id
               WHERE f.received_at > now() - make_interval(secs => $1)
               GROUP BY p.model_version, p.classifier ORDER BY p.model_version, p.classifier""",
            float(window_s), deployment,
        )

    async def bundle_activity(self, window_s: float, deployment: str) -> list[asyncpg.Record]:
        """Per (bundle, classifier) over the window: predictions made, and for bundles other than
        the one serving each image, how often they agree with the serving bundle's label."""
        return await self.pool.fetch(
            """SELECT p.model_version, p.classifier, count(*) AS predictions,
                      count(v.label) AS compared, count(*) FILTER (WHERE p.label = v.label) AS agree,
                      bool_or(p.model_version = i.bundle_version) AS served
               FROM predictions p JOIN images i ON i.image_id = p.image_id AND i.deployment = $2
               LEFT JOIN predictions v ON v.image_id = p.image_id AND v.classifier = p.classifier
                    AND v.model_version = i.bundle_version AND p.model_version <> i.bundle_version
               WHERE p.created_at > now() - make_interval(secs => $1)
               GROUP BY p.model_version, p.classifier ORDER BY p.model_version, p.classifier""",
            float(window_s), deployment,
        )

    async def timeseries(self, window_s: float, step_s: float, deployment: str) -> list[asyncpg.Record]:
        """Per time step (by when an image's third serving prediction was committed): images
        completed, end-to-end p50 / p99 (accepted -> third prediction) and the unanimous share."""
        return await self.pool.fetch(
            """WITH done AS (
                 SELECT i.image_id, max(p.created_at) AS done_at,
                        extract(epoch FROM max(p.created_at) - i.accepted_at) AS e2e,
                        count(DISTINCT p.label) = 1 AS unanimous
                 FROM images i JOIN predictions p ON p.image_id = i.image_id AND p.model_version = i.bundle_version
                 WHERE i.accepted_at > now() - make_interval(secs => $1) AND i.deployment = $3
                 GROUP BY i.image_id, i.accepted_at HAVING count(*) = 3)
               SELECT to_timestamp(floor(extract(epoch FROM done_at) / $2) * $2) AS t, count(*) AS images,
                      1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY e2e) AS p50_ms,
                      1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY e2e) AS p99_ms,
                      avg(unanimous::int) AS agreement
               FROM done GROUP BY 1 ORDER BY 1""",
            float(window_s), float(step_s), deployment,
        )

    async def accuracy_timeseries(self, window_s: float, step_s: float, deployment: str) -> list[asyncpg.Record]:
        """Per time step (by when the label arrived) and bundle: the share of its predictions of
        labelled images that were right (the three classifiers pooled)."""
        return await self.pool.fetch(
            """SELECT to_timestamp(floor(extract(epoch FROM f.received_at) / $2) * $2) AS t, p.model_version,
                      count(*) AS predictions, avg((p.label = f.label)::int) AS accuracy
               FROM feedback f JOIN images i ON i.image_id = f.image_id AND i.deployment = $3
               JOIN predictions p ON p.image_id = f.image_id
               WHERE f.received_at > now() - make_interval(secs => $1)
               GROUP BY 1, 2 ORDER BY 1, 2""",
            float(window_s), float(step_s), deployment,
        )
