"""The agents' batch logic in one process (Faust's test_context on memory://, fakes only at the
Runtime's boundary): no Kafka, PostgreSQL or S3."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import numpy as np
import pytest

from agents import classifiers, dead_letter, extractor
from app.stream.messages import DeadLetter, Trace, decode_descriptors
from models.preprocess import model_pixels, preprocess
from tables import descriptors as table_codec
from tests.unit.inprocess import (InProcessRuntime, app_for, descriptor_event, image, settings, tiny_bundle, until,
                                  upload_event)


def _agent(app, name: str):
    return next(a for a in app.agents.values() if a.name.endswith(name))


@pytest.fixture
def extractor_rig():
    s = settings(roles=("extractor",), extract_batch_size=8, extract_batch_within=0.05, poison_attempts=1)
    app = app_for(s)
    bundle = tiny_bundle()
    runtime = InProcessRuntime(app, s, bundle)
    table = table_codec.declare(app, s)
    runtime.extractor = extractor.register(app, runtime, runtime.deployment, runtime.drift, table)
    return app, runtime, table, bundle


async def test_extractor_batches_extract_each_distinct_image_once_and_publish_every_upload(extractor_rig):
    app, runtime, table, bundle = extractor_rig
    red, green = image((255, 0, 0), salt="r"), image((0, 255, 0), salt="g")
    events = [upload_event(runtime, red), upload_event(runtime, green), upload_event(runtime, red)]
    async with _agent(app, "extractor").test_context() as agent:
        for _, key, value in events:
            await agent.put(value, key=key, wait=False)
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 3, what="three descriptor messages")
    sent = runtime.on(runtime.settings.features_topic)
    assert [str(decode_descriptors(s.value)[0]) for s in sent] == [e[0] for e in events]  # input order
    assert bundle.extractor.images == 2  # the repeated bytes were extracted once
    d = {str(decode_descriptors(s.value)[0]): decode_descriptors(s.value)[1] for s in sent}
    assert np.array_equal(d[events[0][0]], d[events[2][0]])
    traces = [Trace.from_headers(s.headers) for s in sent]
    assert [t.cached for t in traces] == [False, False, True] and {t.bundle_version for t in traces} == {"v1"}
    assert len(table) == 2


async def test_a_reupload_is_answered_from_the_table_without_the_backbone(extractor_rig):
    app, runtime, table, bundle = extractor_rig
    data = image((0, 0, 255), salt="b")
    async with _agent(app, "extractor").test_context() as agent:
        first = upload_event(runtime, data)
        await agent.put(first[2], key=first[1], wait=False)
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 1)
        again = upload_event(runtime, data)
        await agent.put(again[2], key=again[1], wait=False)
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 2)
    assert bundle.extractor.images == 1
    assert Trace.from_headers(runtime.on(runtime.settings.features_topic)[1].headers).cached is True


async def test_the_crop_of_an_upload_the_table_answers_is_not_left_behind(extractor_rig):
    app, runtime, table, bundle = extractor_rig
    spec = bundle.extractor.spec
    data = image((0, 90, 255), salt="left")
    events = [upload_event(runtime, data), upload_event(runtime, data)]
    async with _agent(app, "extractor").test_context() as agent:
        for n, (image_id, key, value) in enumerate(events, 1):
            object_key = f"raw-images/test/{image_id}.png"
            runtime.recent_uploads.put(object_key, spec.name, model_pixels(data, spec))
            await agent.put(value, key=key, wait=False)
            await until(lambda n=n: len(runtime.on(runtime.settings.features_topic)) == n)
    assert bundle.extractor.images == 1  # the second upload was answered by the table ...
    assert not runtime.recent_uploads.items and runtime.recent_uploads.size == 0  # ... and its crop taken


async def test_a_crop_decoded_at_upload_is_extracted_without_fetching_or_decoding_again(extractor_rig):
    app, runtime, table, bundle = extractor_rig
    spec = bundle.extractor.spec
    data = image((40, 200, 90), salt="crop")
    own, stale = upload_event(runtime, data), upload_event(runtime, image((40, 200, 90), salt="stale"))
    for event in (own, stale):
        key = f"raw-images/test/{event[0]}.png"
        crop = model_pixels(runtime.store.objects[key], spec)
        runtime.recent_uploads.put(key, spec.name if event is own else "another-backbone", crop)
    del runtime.store.objects[f"raw-images/test/{own[0]}.png"]  # only the crop can answer for it
    fetched = []
    get = runtime.store.get
    runtime.store.get = lambda key: fetched.append(key) or get(key)
    async with _agent(app, "extractor").test_context() as agent:
        for _, key, value in (own, stale):
            await agent.put(value, key=key, wait=False)
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 2)
    assert not runtime.on(runtime.settings.dead_letter_topic)
    # a crop made for another backbone (a bundle swap in between) is not used: fetched and decoded
    assert fetched == [f"raw-images/test/{stale[0]}.png"] and not runtime.recent_uploads.items
    ids, values = zip(*(decode_descriptors(m.value)[:2] for m in runtime.on(runtime.settings.features_topic)),
                      strict=True)
    assert [str(i) for i in ids] == [own[0], stale[0]]
    expected = bundle.descriptors(np.stack([preprocess(data, spec)]))[0]
    assert np.allclose(values[0], expected, atol=1e-5)


@pytest.fixture
def pipelined_rig():
    """Batches of one, two in flight, and a backbone slow enough that they overlap."""
    s = settings(roles=("extractor",), extract_batch_size=1, extract_batch_within=0.01, extract_pipeline_depth=2,
                 poison_attempts=1)
    app = app_for(s)
    bundle = tiny_bundle()
    runtime = InProcessRuntime(app, s, bundle)
    runtime.recent_uploads.max_bytes = 0  # every image fetched from the store
    table = table_codec.declare(app, s)
    runtime.extractor = extractor.register(app, runtime, runtime.deployment, runtime.drift, table)
    run = bundle.extractor.run

    def slow(batch, wide=False):
        time.sleep(0.2)
        return run(batch, wide)

    bundle.extractor.run = slow
    return app, runtime, table, bundle


async def test_a_batch_in_flight_answers_the_same_bytes_in_the_next_batch(pipelined_rig):
    app, runtime, table, bundle = pipelined_rig
    data = image((200, 10, 10), salt="twice")
    first, second = upload_event(runtime, data), upload_event(runtime, data)
    async with _agent(app, "extractor").test_context() as agent:
        for _, key, value in (first, second):
            await agent.put(value, key=key, wait=False)
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 2, what="two descriptor messages")
    sent = runtime.on(runtime.settings.features_topic)
    assert bundle.extractor.images == 1  # extracted once across the two batches
    assert [str(decode_descriptors(s.value)[0]) for s in sent] == [first[0], second[0]]
    assert [Trace.from_headers(s.headers).cached for s in sent] == [False, True]
    assert np.array_equal(decode_descriptors(sent[0].value)[1], decode_descriptors(sent[1].value)[1])
    assert not runtime.extractor.claims  # claims are dropped once their batch is done


async def test_when_the_batch_in_flight_fails_the_next_one_extracts_for_itself(pipelined_rig):
    app, runtime, table, bundle = pipelined_rig
    data = image((10, 200, 10), salt="fallback")
    gone, kept = upload_event(runtime, data), upload_event(runtime, data)
    missing_key = f"raw-images/test/{gone[0]}.png"
    runtime.store.objects.pop(missing_key)
    get = runtime.store.get

    async def slow_miss(key):
        if key == missing_key:  # the first batch fails only after the second has joined it
            await asyncio.sleep(0.2)
        return await get(key)

    runtime.store.get = slow_miss
    async with _agent(app, "extractor").test_context() as agent:
        for _, key, value in (gone, kept):
            await agent.put(value, key=key, wait=False)
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 1, what="the kept image's message")
        await until(lambda: len(runtime.on(runtime.settings.dead_letter_topic)) == 1, what="the gone image's letter")
    assert str(decode_descriptors(runtime.on(runtime.settings.features_topic)[0].value)[0]) == kept[0]
    assert DeadLetter.loads(runtime.on(runtime.settings.dead_letter_topic)[0].value).code == "object_missing"
    assert bundle.extractor.images == 1 and not runtime.extractor.claims


class _ChangelogNotInMetadataYet:
    """The table, except that its first ``failures`` writes meet a changelog the consumer's metadata
    shows without partitions (a topic just declared on a cluster)."""

    def __init__(self, table, failures: int) -> None:
        self.table, self.failures = table, failures

    def get(self, key):
        return self.table.get(key)

    def __setitem__(self, key, value) -> None:
        from faust.exceptions import PartitionsMismatch

        if self.failures:
            self.failures -= 1
            raise PartitionsMismatch("The source topic 'x' for table 'descriptors' has 4 partitions, but the "
                                     "changelog topic 'x-descriptors-changelog' has 0 partitions.")
        self.table[key] = value


async def test_a_changelog_missing_from_the_metadata_is_an_outage_not_a_poison_message(extractor_rig):
    app, runtime, table, bundle = extractor_rig  # poison_attempts=1: a poison message is dead-lettered at once
    runtime.extractor.table = _ChangelogNotInMetadataYet(table, failures=3)
    event = upload_event(runtime, image((1, 2, 3), salt="meta"))
    async with _agent(app, "extractor").test_context() as agent:
        await agent.put(event[2], key=event[1], wait=False)
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 1, timeout=15,
                    what="the descriptors, once the metadata shows the changelog")
    assert not runtime.on(runtime.settings.dead_letter_topic)
    assert len(table) == 1


async def test_undecodable_and_missing_images_are_dead_lettered_and_the_batch_goes_on(extractor_rig):
    app, runtime, table, bundle = extractor_rig
    good = upload_event(runtime, image((255, 0, 0), salt="ok"))
    broken = upload_event(runtime, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    missing = upload_event(runtime, image((0, 255, 0), salt="gone"))
    runtime.store.objects.pop(f"raw-images/test/{missing[0]}.png")
    async with _agent(app, "extractor").test_context() as agent:
        for _, key, value in (good, broken, missing):
            await agent.put(value, key=key, wait=False)
        await agent.put(b"not json", key=b"x", wait=False)
        await until(lambda: len(runtime.on(runtime.settings.dead_letter_topic)) == 3, what="three dead letters")
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 1)
    letters = {DeadLetter.loads(s.value).code: DeadLetter.loads(s.value) for s in runtime.on(
        runtime.settings.dead_letter_topic)}
    assert set(letters) == {"invalid_image", "object_missing", "malformed_message"}
    assert letters["invalid_image"].image_id == broken[0] and letters["object_missing"].image_id == missing[0]
    assert str(decode_descriptors(runtime.on(runtime.settings.features_topic)[0].value)[0]) == good[0]


async def test_an_s3_outage_is_retried_until_the_object_comes_back(extractor_rig):
    app, runtime, table, bundle = extractor_rig
    runtime.recent_uploads.max_bytes = 0
    runtime.store.down = 2
    ev = upload_event(runtime, image((9, 9, 9), salt="outage"))
    async with _agent(app, "extractor").test_context() as agent:
        await agent.put(ev[2], key=ev[1], wait=False)
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 1, timeout=10)
    assert runtime.store.down == 0 and not runtime.on(runtime.settings.dead_letter_topic)


@pytest.fixture
def classifier_rig():
    s = settings(roles=("classifier-fast",), classify_batch_size=16, classify_batch_within=0.05)
    app = app_for(s)
    bundle = tiny_bundle("v1", k=4)
    runtime = InProcessRuntime(app, s, bundle)
    classifiers.register(app, runtime, runtime.deployment, ["fast"])
    return app, runtime, bundle


async def test_classifiers_group_a_batch_by_the_bundle_that_made_its_descriptors(classifier_rig):
    app, runtime, v1 = classifier_rig
    v2 = tiny_bundle("v2", k=6, seed=1)
    runtime.others["v2"] = v2
    ids = [uuid.uuid4() for _ in range(4)]
    rng = np.random.default_rng(3)
    events = [descriptor_event(v1, ids[0], rng.normal(size=4)), descriptor_event(v2, ids[1], rng.normal(size=6)),
              descriptor_event(v1, ids[2], rng.normal(size=4)), descriptor_event(v2, ids[3], rng.normal(size=6))]
    async with _agent(app, "classifier-fast").test_context() as agent:
        for key, value, headers in events:
            await agent.put(value, key=key, headers=headers, wait=False)
        await until(lambda: len(runtime.db.rows) == 4, what="four prediction rows")
    versions = {image_id: version for image_id, _, version in runtime.db.rows}
    assert versions == {ids[0]: "v1", ids[1]: "v2", ids[2]: "v1", ids[3]: "v2"}
    assert all(r.label in v1.labels for r in runtime.db.rows.values())


@pytest.mark.parametrize("mode, agents", [("shared", ["classifiers-fast-balanced-accurate"]),
                                           ("each", ["classifier-fast", "classifier-balanced", "classifier-accurate"])])
async def test_co_located_classifiers_share_one_agent_or_run_one_each(mode, agents):
    s = settings(roles=("classifier-fast", "classifier-balanced", "classifier-accurate"), classify_batch_size=16,
                 classify_batch_within=0.05, classifier_agents=mode)
    app = app_for(s)
    bundle = tiny_bundle("v1", k=4)
    runtime = InProcessRuntime(app, s, bundle)
    classifiers.register(app, runtime, runtime.deployment, ["fast", "balanced", "accurate"])
    assert sorted(a.name.rsplit(".", 1)[-1] for a in app.agents.values()) == sorted(agents)
    ids = [uuid.uuid4() for _ in range(3)]
    events = [descriptor_event(bundle, i, np.full(4, n, np.float32)) for n, i in enumerate(ids)]
    async with contextlib.AsyncExitStack() as stack:
        running = [await stack.enter_async_context(_agent(app, name).test_context()) for name in agents]
        for key, value, headers in events:
            for agent in running:  # every agent of the worker reads the topic
                await agent.put(value, key=key, headers=headers, wait=False)
        await until(lambda: len(runtime.db.rows) == 9, what="three rows per image")
    assert {(i, c) for i, c, _ in runtime.db.rows} == {(i, c) for i in ids for c in ("fast", "balanced", "accurate")}
    assert set(runtime.db.progress) == set(ids)


async def test_a_descriptor_of_the_wrong_length_is_dead_lettered(classifier_rig):
    app, runtime, v1 = classifier_rig
    good, bad = uuid.uuid4(), uuid.uuid4()
    async with _agent(app, "classifier-fast").test_context() as agent:
        for image_id, k in ((bad, 5), (good, 4)):
            key, value, headers = descriptor_event(v1, image_id, np.ones(k))
            await agent.put(value, key=key, headers=headers, wait=False)
        await until(lambda: len(runtime.db.rows) == 1)
        await until(lambda: len(runtime.on(runtime.settings.dead_letter_topic)) == 1)
    letter = DeadLetter.loads(runtime.on(runtime.settings.dead_letter_topic)[0].value)
    assert letter.code == "wrong_descriptor_count" and letter.stage == "classifier-fast"


async def test_a_postgres_outage_is_retried_and_a_redelivery_adds_no_row(classifier_rig):
    app, runtime, v1 = classifier_rig
    runtime.db.down = 2
    image_id = uuid.uuid4()
    key, value, headers = descriptor_event(v1, image_id, np.zeros(4))
    async with _agent(app, "classifier-fast").test_context() as agent:
        await agent.put(value, key=key, headers=headers, wait=False)
        await until(lambda: len(runtime.db.rows) == 1, timeout=10)
        await agent.put(value, key=key, headers=headers, wait=False)  # redelivered
        await until(lambda: runtime.db.attempts[(image_id, "fast", "v1")] == 2)
    assert len(runtime.db.rows) == 1


async def test_the_dead_letter_agent_marks_the_image_failed():
    s = settings(roles=("dead-letter",))
    app = app_for(s)
    runtime = InProcessRuntime(app, s, tiny_bundle())
    dead_letter.register(app, runtime)
    image_id = uuid.uuid4()
    letter = DeadLetter(stage="extractor", code="invalid_image", reason="broken", topic="t", partition=0, offset=1,
                        failed_at=0.0, image_id=str(image_id))
    async with _agent(app, "dead-letter").test_context() as agent:
        await agent.put(letter.dumps(), key=str(image_id).encode(), wait=False)
        await agent.put(b"unreadable", key=b"x", wait=False)
        await until(lambda: image_id in runtime.db.failed)
    assert runtime.db.failed[image_id] == "invalid_image: broken"


async def test_an_image_that_always_breaks_the_backbone_is_isolated_as_poison(extractor_rig):
    app, runtime, table, bundle = extractor_rig
    run = bundle.extractor.run

    def fragile(batch, wide=False):
        if np.isclose(batch[:, 0].mean(axis=(1, 2)), 13 / 255).any():
            raise RuntimeError("backbone crashed on this image")
        return run(batch, wide)

    bundle.extractor.run = fragile
    events = [upload_event(runtime, image((c, c, c), salt=str(c))) for c in (10, 13, 200, 90)]
    async with _agent(app, "extractor").test_context() as agent:
        for _, key, value in events:
            await agent.put(value, key=key, wait=False)
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 3, timeout=10)
        await until(lambda: len(runtime.on(runtime.settings.dead_letter_topic)) == 1)
    letter = DeadLetter.loads(runtime.on(runtime.settings.dead_letter_topic)[0].value)
    assert letter.code == "poison_message" and letter.image_id == events[1][0] and "RuntimeError" in letter.reason
    assert {str(decode_descriptors(s.value)[0]) for s in runtime.on(runtime.settings.features_topic)} == {
        events[i][0] for i in (0, 2, 3)}


async def test_shadow_bundles_share_the_backbone_run_and_publish_tagged_descriptors(extractor_rig):
    app, runtime, table, bundle = extractor_rig
    k10, k5 = tiny_bundle("shadow-a", k=3, seed=1), tiny_bundle("shadow-b", k=5, seed=2)
    runtime.deployment._shadows = (k10, k5)
    red, green = image((255, 0, 0), salt="sr"), image((0, 255, 0), salt="sg")
    events = [upload_event(runtime, red), upload_event(runtime, green), upload_event(runtime, red)]
    async with _agent(app, "extractor").test_context() as agent:
        for _, key, value in events:
            await agent.put(value, key=key, wait=False)
        await until(lambda: len(runtime.on(runtime.settings.features_topic)) == 9, what="3 serving + 6 shadow messages")
    assert bundle.extractor.images == 2  # one backbone run per distinct image, whatever the shadows
    assert k10.extractor.images == 0 and k5.extractor.images == 0
    by_version: dict[str, list] = {}
    for s in runtime.on(runtime.settings.features_topic):
        t = Trace.from_headers(s.headers)
        by_version.setdefault(t.bundle_version, []).append((t, *decode_descriptors(s.value)))
    assert {v: len(m) for v, m in by_version.items()} == {"v1": 3, "shadow-a": 3, "shadow-b": 3}
    assert all(not t.shadow for t, _, _ in by_version["v1"])
    assert all(t.shadow for v in ("shadow-a", "shadow-b") for t, _, _ in by_version[v])
    assert {len(d) for _, _, d in by_version["shadow-a"]} == {3} and {len(d) for _, _, d in by_version["shadow-b"]} == {5}
    # each shadow's descriptors are its own reduction of the same features
    first = events[0][0]
    features = bundle.features(preprocess(red, bundle.extractor.spec)[None])
    got = next(d for _, i, d in by_version["shadow-a"] if str(i) == first)
    assert np.allclose(got, k10.reduce(features)[0], atol=1e-5)


async def test_shadow_predictions_are_stored_but_never_answer_the_image(classifier_rig):
    app, runtime, v1 = classifier_rig
    shadow = tiny_bundle("v1-shadow", k=3, seed=1)
    runtime.others["v1-shadow"] = shadow
    image_id = uuid.uuid4()
    now = __import__("time").time()
    key, value, headers = descriptor_event(v1, image_id, np.zeros(4))
    s_trace = Trace("v1-shadow", now - 0.1, now - 0.05, now, False, shadow=True)
    from app.stream.messages import encode_descriptors

    async with _agent(app, "classifier-fast").test_context() as agent:
        # the shadow's message first: it must not decide which bundle answers the image
        await agent.put(encode_descriptors(image_id, np.zeros(3)), key=key, headers=s_trace.headers(), wait=False)
        await until(lambda: len(runtime.db.rows) == 1)
        assert image_id not in runtime.db.progress
        await agent.put(value, key=key, headers=headers, wait=False)
        await until(lambda: len(runtime.db.rows) == 2)
    assert runtime.db.progress[image_id].bundle_version == "v1"
    assert {v for _, _, v in runtime.db.rows} == {"v1", "v1-shadow"}
