from app.core.memtrace import MemoryTrace, release_free_heap


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


def test_free_heap_pages_go_back_to_the_os():
    """Many mid-sized blocks freed while one block above them stays allocated: glibc cannot lower
    the heap's top, so the free pages stay resident until malloc_trim hands them back."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: keep 64 KB blocks on the heap
    blocks = [libc.malloc(64 << 10) for _ in range(800)]  # 50 MB
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)  # touch: resident
    keep = libc.malloc(64 << 10)
    for b in blocks:
        libc.free(b)
    released = release_free_heap()
    libc.free(keep)
    assert released is not None and released > 30
