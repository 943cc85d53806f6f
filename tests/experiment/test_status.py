"""`editdecay status`'s estimate of what is left: each pending stage at the median CPU seconds of the done stages
like it (kind, model, fine-tuning type, number of edits), else its kind's median, else not guessed."""

from __future__ import annotations

import pytest


def cost(kind, status, cpu=None, model="smollm2-135m", ft_type=None, n_edits=100):
    return {"stage_id": f"{kind}-{status}-{cpu}-{ft_type}", "kind": kind, "status": status, "cpu_seconds": cpu,
            "model": model, "ft_type": ft_type, "n_edits": n_edits}


def test_each_stage_left_costs_what_the_done_stages_like_it_cost():
    from editdecay.commands.status import remaining_cpu_seconds

    costs = [cost("finetune", "done", 400.0, ft_type="lora"), cost("finetune", "done", 420.0, ft_type="lora"),
             cost("finetune", "done", 640.0, ft_type="dora"),
             cost("finetune", "pending", ft_type="dora"), cost("finetune", "running", ft_type="lora"),
             cost("finetune", "pending", ft_type="lora", model="gemma3-270m"),  # nothing like it: the kind's median
             cost("evaluate", "pending"), cost("edit", "done", 7.0)]
    summary = {"stages": {"finetune": {"done": 3, "pending": 2, "running": 1}, "evaluate": {"pending": 1},
                          "edit": {"done": 1}},
               "seconds_by_kind": {"finetune": {"median_cpu": 420.0}, "edit": {"median_cpu": 7.0}}}
    total, unknown = remaining_cpu_seconds(summary, costs)
    assert total == pytest.approx(640.0 + 410.0 + 420.0)
    assert unknown == ["1 evaluate"]  # no evaluation has finished: not guessed
    # without per-stage costs, the kind's median for every stage left (the earlier estimate)
    assert remaining_cpu_seconds(summary) == (3 * 420.0, ["1 evaluate"])
