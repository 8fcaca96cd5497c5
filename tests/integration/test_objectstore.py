"""Both S3 clients of the per-image calls against the real S3 server: the same object, content
type and metadata either way, and a missing key is NotFound, not an outage."""

import uuid

import pytest

from app.core.errors import NotFound
from app.storage.objectstore import ObjectStore

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("client", "signing"), [("aioboto3", "auto"), ("obstore", "signed"),
                                                  ("obstore", "unsigned")])
async def test_put_get_and_missing_keys_with_either_client(stack, client, signing):
    settings = stack.model_copy(update={"s3_data_client": client, "s3_payload_signing": signing})
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


async def test_a_signed_put_is_refused_when_the_body_does_not_match_its_signature(stack):
    """The server checks a signed body: the same request with other bytes is refused, so the
    signed mode really guards the body in transit (and the unsigned one really skips it)."""
    import aiohttp
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{stack.s3_endpoint}/{stack.s3_bucket}/raw-images/test/{uuid.uuid4()}.jpg"
    creds = Credentials(stack.s3_access_key.get_secret_value(), stack.s3_secret_key.get_secret_value())
    request = AWSRequest("PUT", url, data=b"the signed bytes")
    S3SigV4Auth(creds, "s3", stack.s3_region).add_auth(request)
    async with aiohttp.ClientSession() as http:
        async with http.put(url, data=b"other bytes here", headers=dict(request.headers)) as resp:
            assert resp.status in (400, 403), await resp.text()
        async with http.put(url, data=b"the signed bytes", headers=dict(request.headers)) as resp:
            assert resp.status == 200, await resp.text()
