"""`--backend ray`: the tiny grid on a real local Ray cluster gives exactly the local backend's numbers."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from editdecay.errors import ConfigError
from editdecay.experiment.grid import expand, load_grid
from editdecay.experiment.runner import run_grid
from editdecay.experiment.store import Store

ray = pytest.importorskip("ray", reason="the Ray backend test needs `pip install 'editdecay[ray]'`")

TINY = ROOT / "configs" / "tiny.yaml"


def numbers(store: Path) -> dict[tuple, float]:
    con = sqlite3.connect(store)
    rows = con.execute(
        "SELECT r.method, r.ft_type, g.grp, 'summary', m.metric, m.value FROM runs r JOIN run_groups g USING (run_id)"
        " JOIN metrics m ON m.eval_stage_id = g.eval_stage_id UNION ALL "
        "SELECT r.method, r.ft_type, g.grp, rm.case_id, rm.metric, rm.value FROM runs r JOIN run_groups g"
        " USING (run_id) JOIN record_metrics rm ON rm.eval_stage_id = g.eval_stage_id"
    ).fetchall()
    con.close()
    return {tuple(r[:5]): r[5] for r in rows}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real local Ray cluster (GCS, raylet, worker processes) started by the test and stopped after it."""
    short = Path("/tmp") / f"rt{tmp_path_factory.getbasetemp().name[-6:]}"  # Ray's socket paths must stay short
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(short),
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()
    shutil.rmtree(short, ignore_errors=True)


def test_ray_backend_gives_the_local_numbers(ray_cluster, tmp_path):
    local = run_grid(TINY, tmp_path / "local.db", workdir=tmp_path / "local", progress=False)
    assert local.runs == {"done": 4}
    on_ray = run_grid(TINY, tmp_path / "ray.db", workdir=tmp_path / "shared", backend="ray", progress=False)
    assert on_ray.runs == {"done": 4} and not on_ray.failed and len(on_ray.executed) == 20
    a, b = numbers(tmp_path / "local.db"), numbers(tmp_path / "ray.db")
    assert len(a) > 200 and a == b
    with Store(tmp_path / "ray.db") as db:
        assert db.integrity_check() == []
    pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "shared").glob("stages/*/*/_stage.json")}
    assert os.getpid() not in pids and len(pids) >= 2  # the stages ran in Ray worker processes
    again = run_grid(TINY, tmp_path / "ray.db", workdir=tmp_path / "shared", backend="ray", progress=False)
    assert again.executed == [] and again.runs == {"done": 4}


def test_ray_task_options_carry_resources():
    from editdecay.experiment.backends.ray import RayBackend

    plan = expand(load_grid(ROOT / "configs" / "paper.yaml"))
    spec = next(s for s in plan.stages.values() if s.kind == "finetune")
    opts = RayBackend.options(None, spec)  # type: ignore[arg-type]  # options() reads only the spec
    declared = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())["resources"]["finetune"]
    assert opts["num_gpus"] == 1.0 and opts["num_cpus"] == 4.0 and opts["memory"] == declared["memory_gb"] * 2**30


def test_ray_backend_refuses_unimportable_stage_functions(ray_cluster, tmp_path):
    with pytest.raises(ConfigError, match="'module:function' to run on Ray"):
        run_grid(TINY, tmp_path / "r.db", workdir=tmp_path / "w", backend="ray", progress=False,
                 stage_fns={"edit": lambda *a: {}})
