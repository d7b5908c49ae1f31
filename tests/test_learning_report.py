"""The learning benchmark's *steps to goal* judges settings by environment steps, whatever
the size of their updates."""

import numpy as np

from benchmarks.learning_report import final_returns, SMOOTH_STEPS, steps_to_goal


def _run(per_update: int, total: int, curve) -> dict:
    """A run of `total` steps in updates of `per_update`, its training return at the end
    of each update given by `curve(steps)`, the same for 2 seeds."""
    ends = np.arange(1, total // per_update + 1) * per_update
    returns = [curve(s) for s in ends]
    return {"env_steps": int(ends[-1]), "curves": [returns, list(returns)]}


def test_steps_to_goal_does_not_depend_on_the_update_size():
    # the same learning curve per environment step, seen through small and large updates
    def ramp(steps):
        return min(steps / 1000.0, 500.0)

    small = steps_to_goal(_run(2048, 600_000, ramp), 200.0)
    large = steps_to_goal(_run(8192, 600_000, ramp), 200.0)
    assert small is not None and large is not None
    # a trailing mean over SMOOTH_STEPS lags the ramp by half a window, for both
    assert abs(small - large) <= 8192
    assert 200_000 <= small <= 200_000 + SMOOTH_STEPS


def test_updates_that_finished_no_episode_neither_hide_nor_fake_a_hit():
    def late(steps):
        return None if steps < 50_000 else 1.0

    hit = steps_to_goal(_run(2048, 200_000, late), 0.9)
    assert hit is not None and 50_000 <= hit <= 50_000 + 2 * SMOOTH_STEPS
    assert steps_to_goal(_run(2048, 200_000, lambda s: 0.5), 0.9) is None
    assert steps_to_goal(_run(2048, 200_000, late), None) is None


def test_final_returns_average_the_last_window_of_each_seed():
    run = _run(2048, 100_000, lambda s: s / 1000.0)
    last = run["curves"][0][-round(SMOOTH_STEPS / 2048) :]
    assert final_returns(run) == [float(np.mean(last))] * 2
