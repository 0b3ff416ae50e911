"""``python -m fastbp.bench start``: every case's child script builds its network and trains one step."""

import pytest

from fastbp.bench import start


@pytest.mark.parametrize("name, network, batch, optimizer", start.CASES, ids=[case[0] for case in start.CASES])
def test_every_case_runs_in_a_fresh_process(name, network, batch, optimizer):
    # Cython: no compilation, so the test checks the child script, not Numba's cache (test_numba_cache.py does).
    seconds, saved = start.start_time("cython", network, batch, optimizer)
    assert 0 < seconds < 60 and saved == 0
