from app.memtrace import MemoryTrace


class Hoarded:
    pass


def test_the_census_names_the_object_type_that_grew():
    trace = MemoryTrace(top=3)
    assert trace.tick() == {}  # the first census is the baseline
    hoard = [Hoarded() for _ in range(5000)]
    report = trace.tick()
    assert report["objects"].get("Hoarded") == 5000
    assert report["python_blocks"] >= 5000
    assert len(hoard) == 5000
