"""The command line's step bar: the learning-rate search is shown before the first step, and the
rate and ETA count from the first step, not from the start of the search."""
import time

from cryosgd.progress import StepBar


def test_the_search_is_shown_and_the_rate_counts_from_the_first_step(monkeypatch, capsys):
    monkeypatch.delenv("CRYOSGD_QUIET", raising=False)
    bar = StepBar("sgd", 64, 3.5)
    bar(0, 10, {"band_limit": 6.2, "stage": "tuning the learning rate"})
    assert "tuning the learning rate" in capsys.readouterr().err
    searched = time.time()
    time.sleep(0.2)   # the search
    bar(1, 10, {"band_limit": 6.2, "value": 1.0})
    assert bar.bar.n == 1 and bar.bar.start_t >= searched + 0.2   # not from before the search
    assert "tuning" not in bar.bar.postfix and "res=36.1A" in bar.bar.postfix
    bar.close()
