"""Both S3 clients of the per-image calls against the real S3 server: the same object, content
type and metadata either way, and a missing key is NotFound, not an outage."""

import uuid

import pytest

from app.errors import NotFound
from app.storage.objectstore import ObjectStore

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("client", ["aioboto3", "obstore"])
async def test_put_get_and_missing_keys_with_either_client(stack, client):
    settings = stack.model_copy(update={"s3_data_client": client})
    key = f"raw-images/test/{uuid.uuid4()}.jpg"
    async with ObjectStore(settings) as store:
        assert (store._data is not None) == (client == "obstore")  # noqa: SLF001 - the path under test
        await store.put(key, b"\xff\xd8 bytes", "image/jpeg", sha256="abc123")
        assert await store.get(key) == b"\xff\xd8 bytes"
        head = await store.client.head_object(Bucket=store.bucket, Key=key)
        assert head["ContentType"] == "image/jpeg" and head["Metadata"] == {"sha256": "abc123"}
        with pytest.raises(NotFound):
            await store.get(key + ".missing")
        assert await store.delete(key)
