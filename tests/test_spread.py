"""The benchmark tables' `median [min-max]` cells and the run summaries behind them."""

from __future__ import annotations

from bitdistill._spread import format_spread, spread


def test_spread_keeps_every_run_and_takes_the_middle():
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": [3.0, 1.0, 2.0]}
    assert spread((4.0, 1.0, 2.0, 3.0))["median"] == 2.5  # even count: mean of the two middle runs


def test_format_spread_cell():
    assert format_spread(spread([10.0, 12.25, 11.0]), 2) == "11.00 [10.00-12.25]"
    assert format_spread({"median": 5.04, "min": 4.96, "max": 5.15}) == "5.0 [5.0-5.2]"
