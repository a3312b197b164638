"""Splitting a call over threads (cryosgd.runtime.threads): the groups, the results in order, and a
failing group's error raised after every group has ended, with the thread count restored."""
import threading
import time

import pytest
import torch

from cryosgd.runtime.threads import map_in_threads, thread_groups


def test_groups_cover_the_images_in_order_with_a_minimum_size():
    cpu = torch.device("cpu")
    assert thread_groups(100, cpu, 2) == [slice(0, 50), slice(50, 100)]
    assert thread_groups(100, cpu, 8) == [slice(0, 33), slice(33, 67), slice(67, 100)]   # 32 images at least
    assert thread_groups(40, cpu, 2) == [slice(0, 40)]
    assert thread_groups(100, torch.device("meta")) == [slice(0, 100)]   # one group off the CPU


def test_results_come_in_order_and_a_failure_waits_for_the_others():
    threads = torch.get_num_threads()
    names = map_in_threads(lambda g: (g, threading.current_thread().name), [0, 1, 2])
    assert [g for g, _ in names] == [0, 1, 2] and all(n.startswith("cryosgd-split") for _, n in names)
    ended = []

    def work(g):
        if g == 0:
            raise ValueError("group 0")
        time.sleep(0.2)
        ended.append(g)
        return g

    with pytest.raises(ValueError, match="group 0"):
        map_in_threads(work, [0, 1, 2])
    assert sorted(ended) == [1, 2] and torch.get_num_threads() == threads
    assert map_in_threads(lambda g: g * 2, [1, 2]) == [2, 4]


def test_each_group_runs_with_denormals_flushed_in_its_own_thread():
    """Flushing is a thread's setting: each group's thread flushes while it runs (a kernel's own block
    inside it does not switch that off), and the calling thread's setting is left alone."""
    from cryosgd.runtime.device import flush_denormals

    tiny = torch.tensor([1e-39], dtype=torch.float32)   # a float32 denormal

    def work(g):
        with flush_denormals():
            pass
        return float(tiny * 1.0)

    assert map_in_threads(work, [0, 1]) == [0.0, 0.0]
    assert float(tiny * 1.0) != 0.0
