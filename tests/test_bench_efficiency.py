"""The efficiency benchmark (continual.bench.efficiency) at a tiny size: curves, target, bad flags."""
import argparse
import json
import math

import pytest

from lmsleep.continual.bench import efficiency, runner
from lmsleep.continual.bench.cli import add_arguments


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["efficiency", *argv])


def test_a_tiny_run_gives_curves_and_consistent_metrics(tmp_path):
    args = parse("--seeds", "1", "--max-steps", "4", "--sleep-steps", "1,2", "--target-steps", "3", "--base-steps", "30",
                 "--generator-passages", "1", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    results = runner.run(efficiency, args, argv=["efficiency"])
    seed = results["per_seed"][0]
    assert set(seed["systems"]) == {efficiency.SLEEP, *efficiency.SYSTEMS}
    for system in efficiency.SYSTEMS:
        curve = seed["curves"][system][0]
        assert [p[0] for p in curve] == [1, 2, 4]  # steps 1, 2, 4 read off one run
        assert all(b[1] >= a[1] for a, b in zip(curve, curve[1:]))  # time only grows
    sleep = seed["curves"][efficiency.SLEEP][0]
    assert [p[0] for p in sleep] == [1, 2, 3]
    row = seed["systems"][efficiency.SLEEP]
    assert row["accuracy_at_sleep_time"] == sleep[-1][2]
    if math.isnan(row["reached"]):  # the tiny base already answers as well as the sleep: no target
        assert all(math.isnan(m["reached"]) for m in seed["systems"].values())
    else:
        assert row["reached"] == 1.0
        for system, metrics in seed["systems"].items():
            assert metrics["reached"] in (0.0, 1.0)
            assert math.isnan(metrics["seconds_to_target"]) == (metrics["reached"] == 0.0)
    for system in efficiency.SYSTEMS:  # one run read off at each budget: the reading probe is measured too
        assert all(0 <= point[3] <= 1 for point in seed["curves"][system][0])
    assert (tmp_path / "out" / "efficiency.png").is_file()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["benchmark"] == "efficiency"


def test_budgets_double_up_to_the_largest():
    assert efficiency._budgets(10) == [1, 2, 4, 8, 10]
    assert efficiency._budgets(1) == [1]


@pytest.mark.parametrize("flag, value, message", [("--sleep-steps", "a,b", "--sleep-steps"),
                                                  ("--sleep-steps", "0", "≥ 1"), ("--max-steps", "0", "--max-steps")])
def test_bad_flags_are_named(flag, value, message):
    with pytest.raises(ValueError, match=message):
        efficiency.units(parse(flag, value))
