"""Stacks larger than memory: positioned reads, bounded resident memory, background loading."""
from __future__ import annotations

import itertools
import pickle
import sys
import threading
import warnings
from concurrent.futures import Future

import mrcfile
import numpy as np
import pytest

import cryosgd.io.mrc
import cryosgd.io.particles
from cryosgd.forward.ctf import CTFParams
from cryosgd.io import ImageStack, InputError, ParticleSet
from cryosgd.io.mrc import write_stack_chunks
from cryosgd.io.prefetch import Prefetcher
from cryosgd.runtime.memory import current_rss_bytes, format_bytes, peak_rss_bytes

MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


def _images(dtype, n: int, box: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (100 * rng.standard_normal((n, box, box))).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, (n, box, box), endpoint=True).astype(dtype)


def _mrcfile_stack(path, data: np.ndarray, extended_header: int = 0):
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as mrc:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns of NaN/Inf data
        mrc.set_data(data)
        mrc.set_image_stack()
        if extended_header:
            mrc.set_extended_header(np.arange(extended_header, dtype=np.uint8).view("V1"))
    return path


def _particles(source, stacks: list, per_stack: int, box: int) -> ParticleSet:
    n = len(stacks) * per_stack
    ctf = CTFParams.make(np.full(n, 15000.0), np.full(n, 14000.0), np.zeros(n), 300.0, 2.7, 0.1)
    files = [stack for stack in stacks for _ in range(per_stack)]
    return ParticleSet(source, files, np.tile(np.arange(per_stack), len(stacks)), 1.5, box, ctf)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("box", [15, 16])
def test_read_matches_mrcfile(tmp_path, mode, byte_order, box):
    data = _images(MODES[mode], 23, box).astype(np.dtype(MODES[mode]).newbyteorder(byte_order))
    path = _mrcfile_stack(tmp_path / "s.mrcs", data, extended_header=96 if mode == 1 else 0)
    with mrcfile.open(path, permissive=True) as mrc:
        assert int(mrc.header.mode) == mode
        reference = np.asarray(mrc.data, dtype=np.float32)
    with ImageStack(path) as stack:
        assert stack.shape == (23, box, box)
        for index in ([7, 0, 22, 3, 3, 12], list(range(4, 15)), [5, 6, 7, 20, 21, 0, 1], [22], []):
            got = stack.read(index)
            assert got.dtype == np.float32 and got.shape == (len(index), box, box)
            np.testing.assert_array_equal(got, reference[index])
        np.testing.assert_array_equal(stack.read(np.arange(23)), reference)


def test_one_read_per_run_of_consecutive_images(tmp_path, monkeypatch):
    data = _images(np.float32, 30, 16)
    path = _mrcfile_stack(tmp_path / "s.mrcs", data)
    reads = []
    original = cryosgd.io.mrc._pread_into

    def counting(file, view, offset):
        reads.append((offset, len(view)))
        return original(file, view, offset)

    monkeypatch.setattr(cryosgd.io.mrc, "_pread_into", counting)
    image_bytes = 16 * 16 * 4
    with ImageStack(path) as stack:
        np.testing.assert_array_equal(stack.read([20, 3, 4, 5, 9, 21, 4]), data[[20, 3, 4, 5, 9, 21, 4]])
        assert reads == [(1024 + 3 * image_bytes, 3 * image_bytes), (1024 + 9 * image_bytes, image_bytes),
                         (1024 + 20 * image_bytes, 2 * image_bytes)]
        reads.clear()
        monkeypatch.setattr(cryosgd.io.mrc, "_READ_BYTES", 4 * image_bytes)  # long runs are split
        np.testing.assert_array_equal(stack.read(np.arange(10)), data[:10])
        assert [size // image_bytes for _, size in reads] == [4, 4, 2]


def test_read_keeps_validation(tmp_path):
    data = _images(np.float16, 6, 8)
    data[4, 1, 1] = np.inf
    with ImageStack(_mrcfile_stack(tmp_path / "s.mrcs", data)) as stack:
        np.testing.assert_array_equal(stack.read([0, 5]), data[[0, 5]].astype(np.float32))
        with pytest.raises(InputError, match="image 5 has NaN or Inf pixels"):
            stack.read([3, 4])
        with pytest.raises(InputError, match="image 7 requested but the stack holds 6"):
            stack.read([6])
        with pytest.raises(InputError, match="image 0 requested"):
            stack.read([-1])
    with pytest.raises(ValueError, match="closed"):
        stack.read([0])
    with mrcfile.new(tmp_path / "c.mrcs") as mrc:
        mrc.set_data(np.zeros((3, 8, 8), dtype=np.complex64))
    with pytest.raises(InputError, match="complex data"):
        ImageStack(tmp_path / "c.mrcs")


@pytest.mark.parametrize("box", [15, 16])
def test_write_stack_chunks_equals_write_stack(tmp_path, box):
    images = _images(np.float32, 11, box)
    cryosgd.io.mrc.write_stack(tmp_path / "whole.mrcs", images, 1.5)
    chunks = (images[i:i + 4] for i in range(0, 11, 4))
    assert write_stack_chunks(tmp_path / "chunks.mrcs", chunks, 1.5) == 11
    with mrcfile.open(tmp_path / "whole.mrcs") as whole, mrcfile.open(tmp_path / "chunks.mrcs") as chunked:
        np.testing.assert_array_equal(chunked.data, whole.data)
        assert chunked.is_image_stack() and chunked.voxel_size.x == pytest.approx(1.5)
        for name in ("nx", "ny", "nz", "mx", "my", "mz", "mode", "ispg", "cella", "dmin", "dmax"):
            assert chunked.header[name] == whole.header[name], name
        for name in ("dmean", "rms"):
            assert chunked.header[name] == pytest.approx(whole.header[name], rel=1e-5), name
    with pytest.raises(ValueError, match="one image size"):
        write_stack_chunks(tmp_path / "bad.mrcs", [images[:2], images[:2, :8, :8]], 1.5)
    assert not (tmp_path / "bad.mrcs").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="current RSS is read from /proc/self/statm (Linux)")
def test_reading_a_large_set_keeps_memory_flat(tmp_path):
    box, per_stack, n_stacks = 128, 1600, 4  # 64 KiB images: 4 stacks of 100 MiB
    rng = np.random.default_rng(0)
    stacks = [tmp_path / f"mic{k}.mrcs" for k in range(n_stacks)]
    try:
        for stack in stacks:
            chunks = (rng.standard_normal((200, box, box), dtype=np.float32) for _ in range(per_stack // 200))
            write_stack_chunks(stack, chunks, 1.5)
        particles = _particles(tmp_path / "p.star", stacks, per_stack, box)
        before = current_rss_bytes()
        highest = before
        order = rng.permutation(len(particles))
        for start in range(0, len(order), 100):
            images = particles.read_images(np.sort(order[start:start + 100]))
            assert images.shape == (len(order[start:start + 100]), box, box)
            highest = max(highest, current_rss_bytes())
        particles.close()
        growth = highest - before
        assert growth < 100 * 2**20, f"resident memory grew by {format_bytes(growth)} reading 400 MiB"
        assert peak_rss_bytes() >= highest - 2**20  # ru_maxrss and statm agree to within a page or so
    finally:
        for stack in stacks:
            stack.unlink(missing_ok=True)


def test_particle_set_reads_from_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(cryosgd.io.particles, "_OPEN_STACKS", 1)  # every read reopens and closes stacks
    data = [_images(np.float32, 10, 8, seed=k) for k in range(5)]
    stacks = [cryosgd.io.mrc.write_stack(tmp_path / f"s{k}.mrcs", d, 1.5) or tmp_path / f"s{k}.mrcs"
              for k, d in enumerate(data)]
    particles = _particles(tmp_path / "p.star", stacks, 10, 8)
    everything = np.concatenate(data)
    rng = np.random.default_rng(1)
    batches = [np.sort(rng.choice(50, 12, replace=False)) for _ in range(200)]
    errors = []

    def reader(seed):
        try:
            for index in batches[seed::4]:
                np.testing.assert_array_equal(particles.read_images(index), everything[index])
        except Exception as err:  # reported in the main thread
            errors.append(err)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    copy = pickle.loads(pickle.dumps(particles))
    np.testing.assert_array_equal(copy.read_images([49, 0]), everything[[49, 0]])
    copy.close()
    particles.close()


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("prefetch")]


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_prefetcher_yields_in_order(depth):
    with Prefetcher(lambda k: k * k, range(20), depth=depth) as items:
        assert list(items) == [(k, k * k) for k in range(20)]
    assert list(Prefetcher(str, [], depth=depth)) == []
    assert not _prefetch_threads()


def test_prefetcher_loads_at_most_depth_ahead():
    """While the caller holds item k, keys up to k + depth are drawn (no further) and loaded."""
    drawn, loaded = [], []
    ready = [threading.Event() for _ in range(12)]

    def keys():
        for key in range(12):
            drawn.append(key)
            yield key

    def load(key):
        loaded.append(key)
        ready[key].set()
        return key

    consumed = []
    with Prefetcher(load, keys(), depth=3) as items:
        for key, _ in items:
            consumed.append(key)
            last = min(key + 3, 11)
            assert drawn == list(range(last + 1))  # drawn in the caller's thread, by next()
            assert ready[last].wait(timeout=60)    # loaded in the background meanwhile
            assert loaded == drawn
    assert consumed == list(range(12))


def test_prefetcher_overlaps_loading_and_computing():
    """The next item is loaded, in another thread, before the caller has finished with the current one."""
    ready = [threading.Event() for _ in range(10)]
    loaders = set()

    def load(key):
        loaders.add(threading.get_ident())
        ready[key].set()
        return key

    with Prefetcher(load, range(10)) as items:
        for key, _ in items:
            if key < 9:  # the caller "computes" until the next item is there: it never asks for it first
                assert ready[key + 1].wait(timeout=60), f"item {key + 1} was not loaded while item {key} was in use"
    assert len(loaders) == 1 and threading.get_ident() not in loaders


def test_prefetcher_raises_at_the_failing_item():
    def load(key):
        if key == 3:
            raise KeyError(key)
        return key

    got = []
    items = Prefetcher(load, range(10))
    with pytest.raises(KeyError):
        for key, value in items:
            got.append(value)
    assert got == [0, 1, 2]
    assert list(items) == [] and not _prefetch_threads()

    def keys():
        yield from range(4)
        raise RuntimeError("no more keys")

    got.clear()
    with pytest.raises(RuntimeError, match="no more keys"):
        for key, value in Prefetcher(lambda k: k, keys(), depth=2):
            got.append(value)
    assert got == [0, 1, 2, 3]


def test_prefetcher_stops_cleanly(monkeypatch):
    """close() cancels the queued loads and waits for the running one: nothing loads after it."""
    started, finished = [], []
    running, cancelled = threading.Event(), threading.Event()
    cancel = Future.cancel

    def observed_cancel(future):
        done = cancel(future)
        if done:  # a queued load was cancelled: let the running one end
            cancelled.set()
        return done

    monkeypatch.setattr(Future, "cancel", observed_cancel)

    def load(key):
        started.append(key)
        if key == 3:
            running.set()
            if not cancelled.wait(timeout=60):
                return key  # never finished: close() cancelled nothing
        finished.append(key)
        return key

    items = Prefetcher(load, itertools.count(), depth=2)  # endless keys
    assert [next(items)[0] for _ in range(3)] == [0, 1, 2]
    assert running.wait(timeout=60)  # key 3 is loading in the one thread, key 4 waits behind it
    items.close()
    assert not _prefetch_threads()
    assert started == finished == [0, 1, 2, 3]
    with pytest.raises(StopIteration):
        next(items)
    items.close()  # idempotent
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(load, range(3), depth=0)


def test_prefetcher_feeds_minibatches(tmp_path):
    data = [_images(np.float32, 20, 8, seed=k) for k in range(3)]
    stacks = []
    for k, d in enumerate(data):
        cryosgd.io.mrc.write_stack(tmp_path / f"s{k}.mrcs", d, 1.5)
        stacks.append(tmp_path / f"s{k}.mrcs")
    particles = _particles(tmp_path / "p.star", stacks, 20, 8)
    everything = np.concatenate(data)
    rng = np.random.default_rng(0)
    batches = (np.sort(rng.choice(60, 10, replace=False)) for _ in range(30))
    with Prefetcher(particles.read_images, batches) as items:
        for index, images in items:
            np.testing.assert_array_equal(images, everything[index])
            np.testing.assert_array_equal(particles.read_images(index[:3]), everything[index[:3]])
    particles.close()
