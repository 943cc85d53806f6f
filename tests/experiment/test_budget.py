"""The local backend's budget: ready stages start side by side only while their declared num_cpus fit the
cores and their peak memory the RAM; --workers auto is one worker per usable core."""

from __future__ import annotations

import pytest
import yaml
from helpers import ROOT

from editdecay.errors import ConfigError
from editdecay.experiment.runner import plan_grid, run_grid

TINY = ROOT / "configs" / "tiny.yaml"


class _RecordingEngine:
    """A backend that computes nothing: each stage 'finishes' in submission order, one per wait(); it records
    the stages in flight (and their num_cpus) at every submission."""

    def __init__(self, capacity: int):
        self.capacity, self.in_flight, self.seen = capacity, [], []

    def submit(self, spec, inputs, artifact):
        self.in_flight.append(spec)
        self.seen.append([(s.stage_id, s.resources.get("num_cpus", 1)) for s in self.in_flight])

    def wait(self):
        spec = self.in_flight.pop(0)
        return [{"stage_id": spec.stage_id, "status": "done", "seconds": 0.0, "cpu_seconds": 0.0}]

    def close(self):
        pass


@pytest.mark.parametrize(("cpus", "expect_pairs"), [(1, False), (2, True)])
def test_stages_run_side_by_side_only_while_their_cpus_fit(tmp_path, monkeypatch, cpus, expect_pairs):
    """--workers auto uses every core: ready stages are packed while their declared num_cpus fit the budget,
    never beyond it (a 2-cpu stage alone still runs on a 1-cpu budget), and so never oversubscribe the machine."""
    import editdecay.experiment.runner as runner

    grid = yaml.safe_load(TINY.read_text())
    grid["resources"] = {**(grid.get("resources") or {}), "finetune": {"num_cpus": 2}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    engine = _RecordingEngine(capacity=4)
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: engine)
    monkeypatch.setattr(runner, "_finish", lambda *a, **k: None)
    monkeypatch.setattr(runner, "_drop_finished_transients", lambda *a, **k: None)
    result = run_grid(path, tmp_path / "r.db", workdir=tmp_path / "w", workers="auto", cpus=cpus, progress=False)
    plan = plan_grid(path)
    assert sorted(result.executed) == sorted(plan.stages)  # every stage ran once
    for flight in engine.seen:
        assert len(flight) == 1 or sum(max(1, c) for _, c in flight) <= cpus, flight
    assert any(len(f) == 2 for f in engine.seen) is expect_pairs
    assert any(len(f) == 1 and c == 2 for f in engine.seen for _, c in f)  # a 2-cpu fine-tune ran


def test_workers_auto_is_one_per_usable_core_and_bad_values_are_refused(tmp_path):
    from editdecay.experiment.runner import resolve_workers, usable_cpus

    assert resolve_workers("auto") == usable_cpus() >= 1
    assert resolve_workers("3") == resolve_workers(3) == 3
    for bad in (0, "two", True, -1):
        with pytest.raises(ConfigError, match="--workers"):
            resolve_workers(bad)
    with pytest.raises(ConfigError, match="--cpus"):
        run_grid(TINY, tmp_path / "r.db", workdir=tmp_path / "w", cpus=0, progress=False)


def test_the_budget_keeps_summed_peak_memory_within_the_machine():
    """Two stages whose peaks (estimated, or declared memory_gb where larger) together exceed the memory run one
    after the other; a stage larger than the whole budget still runs, alone."""
    from editdecay.experiment.plan import StageSpec
    from editdecay.experiment.runner import Budget

    gb = 2**30
    a = StageSpec("a", "finetune", {}, {}, {"num_cpus": 1, "memory_gb": 0})
    b = StageSpec("b", "finetune", {}, {}, {"num_cpus": 1, "memory_gb": 9})
    huge = StageSpec("c", "finetune", {}, {}, {"num_cpus": 8, "memory_gb": 0})
    budget = Budget(cpus=4, memory=16 * gb, peaks={"a": 8 * gb, "b": 2 * gb, "c": 64 * gb})
    assert budget.need(b) == (1.0, 9 * gb)  # declared beats the smaller estimate
    assert budget.fits(a, idle=True)
    budget.take(a)
    assert not budget.fits(b, idle=False)  # 8 + 9 > 16
    assert not budget.fits(huge, idle=False)
    budget.take(a, sign=-1)
    assert budget.fits(huge, idle=True) and (budget.used_cpus, budget.used_memory) == (0.0, 0.0)
