import asyncio

from app.core.backoff import Backoff


def test_doubles_up_to_the_cap_and_resets(monkeypatch):
    slept = []

    async def sleep(s):
        slept.append(s)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    b = Backoff(0.5, 3.0)

    async def go():
        for _ in range(5):
            await b.wait()
        b.reset()
        await b.wait()

    asyncio.run(go())
    assert slept == [0.5, 1.0, 2.0, 3.0, 3.0, 0.5]
