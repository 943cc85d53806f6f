"""Grid configs: validation messages, expansion, content addressing and sharing of stages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from editdecay.cli import main
from editdecay.errors import ConfigError
from editdecay.experiment.grid import expand, load_grid, parse_grid

TINY = ROOT / "configs" / "tiny.yaml"


def tiny_raw() -> dict:
    return yaml.safe_load(TINY.read_text())


def write(tmp_path: Path, raw: dict | str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def test_tiny_grid_expands_and_shares_stages():
    plan = expand(load_grid(TINY))
    assert len(plan.runs) == 2 * 2  # methods x ft_types
    kinds = [s.kind for s in plan.stages.values()]
    # 1 base, 1 stats, 2 edits (one per method), 2 base fine-tunes (one per ft type, shared by both methods),
    # 4 edit fine-tunes, 1 + 2 + 2 + 4 evaluations
    assert kinds.count("base") == 1 and kinds.count("edit") == 2
    assert kinds.count("stats") == 1  # MEMIT and AlphaEdit on the same layers share their statistics
    assert kinds.count("finetune") == 6 and kinds.count("evaluate") == 9
    by_method: dict[str, set[str]] = {}
    for run in plan.runs:
        by_method.setdefault(run.values["method"], set()).add(run.stages["edit"])
        assert set(run.groups) == {"M", "M_ft", "M_ed", "M_ed_ft"}
        assert len(set(run.groups.values())) == 4
    assert all(len(ids) == 1 for ids in by_method.values())  # one edit serves every fine-tuning type
    m_ids = {run.groups["M"] for run in plan.runs}
    assert len(m_ids) == 1 and plan.stage_uses[m_ids.pop()] == 4
    # the topological order puts every dependency first
    seen: set[str] = set()
    for sid, spec in plan.stages.items():
        assert set(spec.deps.values()) <= seen
        seen.add(sid)


def test_edited_layer_selection_resolves_to_the_edit_layers_for_both_fine_tunes():
    plan = expand(load_grid(TINY))
    run = plan.runs[0]
    for role in ("finetune_base", "finetune_edit"):
        assert plan.stages[run.stages[role]].config["finetune"]["layers"] == [1, 2]


def test_stage_ids_are_stable_and_change_only_downstream_of_a_changed_setting(tmp_path):
    a = expand(load_grid(TINY))
    b = expand(load_grid(TINY))
    assert list(a.stages) == list(b.stages)
    raw = tiny_raw()
    raw["finetune"]["max_steps"] = 3
    c = expand(load_grid(write(tmp_path, raw)))
    ra, rc = a.runs[0], c.runs[0]
    assert ra.stages["base"] == rc.stages["base"] and ra.stages["edit"] == rc.stages["edit"]
    assert ra.groups["M_ed"] == rc.groups["M_ed"] and ra.groups["M"] == rc.groups["M"]
    assert ra.stages["finetune_edit"] != rc.stages["finetune_edit"]
    assert ra.groups["M_ed_ft"] != rc.groups["M_ed_ft"]


def test_exponent_floats_read_as_numbers_like_set_does(tmp_path):
    """`lr: 2e-4` (YAML 1.2; PyYAML's 1.1 reads it as a string) is the number 2.0e-4: same stages, same ids."""
    text = TINY.read_text().replace("\nfinetune:\n", "\nfinetune:\n  lr: LR\n", 1)
    short = expand(load_grid(write(tmp_path, text.replace("LR", "2e-4"), "short.yaml")))
    dotted = expand(load_grid(write(tmp_path, text.replace("LR", "2.0e-4"), "dotted.yaml")))
    assert list(short.stages) == list(dotted.stages)
    assert expand(load_grid(TINY)).runs[0].stages["finetune_edit"] != short.runs[0].stages["finetune_edit"]


def test_overrides_apply_per_method_model_and_ft_type(tmp_path):
    raw = tiny_raw()
    raw["overrides"] = [
        {"when": {"method": "alphaedit"}, "edit": {"layers": [2, 3]}},
        {"when": {"ft_type": "full"}, "finetune": {"lr": 1e-5}},
        {"when": {"model": "tiny:llama", "ft_type": "lora"}, "finetune": {"r": 2}},
    ]
    plan = expand(load_grid(write(tmp_path, raw)))
    for run in plan.runs:
        ft = plan.stages[run.stages["finetune_edit"]].config["finetune"]
        edit = plan.stages[run.stages["edit"]].config["hparams"]
        assert edit["layers"] == ([2, 3] if run.values["method"] == "alphaedit" else [1, 2])
        assert ft["layers"] == edit["layers"]  # "edited" follows the method's own layers
        if run.values["ft_type"] == "full":
            assert ft["lr"] == 1e-5 and ft["r"] == 4
        else:
            assert "lr" not in ft and ft["r"] == 2


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda r: r.update(models=["not-a-model"]), "registered models: gemma3-270m, smollm2-135m"),
        (lambda r: r.update(methods=["rome"]), "unknown method 'rome'; allowed: memit, alphaedit"),
        (lambda r: r.update(ft_types=["qlora"]), "allowed: full, lora, dora"),
        (lambda r: r.update(layers=[[1, 7]]), "layer 7 is out of range for 'tiny:llama', which has 4 layers"),
        (lambda r: r["edit"].update(layers=[1, 9]), "'edit' (memit on tiny:llama): hparams.layers: layer 9 out of range"),
        (lambda r: r["edit"].update(v_lrr=0.1), "unknown hparams key(s) v_lrr for memit"),
        (lambda r: r.update(n_edits=[0]), "'n_edits': 0 is not a positive integer"),
        (lambda r: r.update(colour="red"), "'colour': unknown key; allowed:"),
        (lambda r: r["finetune"].update(lrr=1.0), "unknown fine-tuning setting(s) ['lrr']"),
        (lambda r: r["evaluate"].update(downstream=["hellaswagg"]), "unknown task 'hellaswagg'"),
        (lambda r: r.update(ft_data=["no-such-corpus"]), "'ft_data': 'no-such-corpus' is neither"),
        (lambda r: r.update(overrides=[{"when": {"ft_type": "lora"}, "edit": {"layers": [1]}}]),
         "an edit override may only depend on"),
        (lambda r: r.update(models=["tiny:transformerxl"]), "unknown tiny architecture 'transformerxl'"),
    ],
)
def test_bad_configs_fail_with_a_message_naming_the_problem(tmp_path, change, needle):
    raw = copy.deepcopy(tiny_raw())
    change(raw)
    with pytest.raises(ConfigError) as info:
        load_grid(write(tmp_path, raw))
    assert needle in str(info.value)
    assert str(tmp_path / "grid.yaml") in str(info.value)


def test_malformed_yaml_names_the_line(tmp_path):
    text = TINY.read_text().replace("methods: [memit, alphaedit]", "methods: [memit, alphaedit")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+, column \d+"):
        load_grid(write(tmp_path, text))


def test_too_many_edits_for_the_data_fails_at_planning(tmp_path):
    raw = tiny_raw()
    raw["edit_data"] = [str(write(tmp_path, "", "few.jsonl").with_suffix(".jsonl"))]
    (tmp_path / "few.jsonl").write_text('{"subject": "Paris", "prompt": "{} is in", "target_new": "Italy"}\n')
    with pytest.raises(ConfigError, match="3 edits asked for but .* has 1 records"):
        expand(load_grid(write(tmp_path, raw)))


def test_hub_models_need_declared_facts_when_not_downloaded(tmp_path):
    raw = tiny_raw()
    raw["models"] = ["some-org/not-downloaded-model"]
    with pytest.raises(ConfigError, match="declare it as"):
        load_grid(write(tmp_path, raw))
    raw["models"] = [{"name": "some-org/not-downloaded-model", "num_layers": 2}]
    with pytest.raises(ConfigError, match="'edit.layers': layer 2 is out of range .* which has 2 layers"):
        load_grid(write(tmp_path, raw))
    raw["edit"]["layers"] = [0, 1]
    assert load_grid(write(tmp_path, raw)).model_info["some-org/not-downloaded-model"]["num_layers"] == 2


def test_shipped_configs_validate():
    paper = expand(load_grid(ROOT / "configs" / "paper.yaml"))
    assert {r.values["n_edits"] for r in paper.runs} == {100, 1000, 10000}
    assert {r.values["model"] for r in paper.runs} >= {"gpt2-xl", "EleutherAI/gpt-j-6b"}
    # cpu-study uses gemma3-270m, whose one-time conversion is not a unit test's job: validate keys and axes
    study = parse_grid(yaml.safe_load((ROOT / "configs" / "cpu-study.yaml").read_text()), "cpu-study.yaml",
                       check_models=False)
    assert set(study.axes["methods"]) == {"memit", "alphaedit"}
    assert set(study.axes["ft_types"]) == {"full", "lora", "dora"}


@pytest.mark.real
def test_demo_config_plans_on_the_real_model(capsys):
    assert main(["plan", str(ROOT / "configs" / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "estimated work" in out


def test_plan_command_prints_runs_shared_stages_and_estimate(capsys):
    assert main(["plan", str(TINY)]) == 0
    out = capsys.readouterr().out
    assert "4 run(s)" in out
    assert "20 distinct (40 without sharing); 12 shared by 2+ runs" in out
    assert "estimated work" in out


def test_plan_command_reports_config_errors_without_traceback(tmp_path, capsys):
    raw = tiny_raw()
    raw["methods"] = ["rome"]
    assert main(["plan", str(write(tmp_path, raw))]) == 1
    err = capsys.readouterr().err
    assert "unknown method 'rome'" in err and "Traceback" not in err


def test_one_targets_stage_serves_both_methods_and_edit_stages_store_deltas():
    plan = expand(load_grid(TINY))
    targets = [s for s in plan.stages.values() if s.kind == "targets"]
    assert len(targets) == 1
    edits = [s for s in plan.stages.values() if s.kind == "edit"]
    assert {e.deps["targets"] for e in edits} == {targets[0].stage_id}
    assert all(e.config["keep_model"] is False for e in edits)
    # changing an update-rule setting (λ) keeps the targets stage; changing a z setting makes a new one
    raw = tiny_raw()
    raw["edit"]["mom2_update_weight"] = 777.0
    assert [s.stage_id for s in expand(parse_grid(raw, "g")).stages.values() if s.kind == "targets"] == \
        [targets[0].stage_id]
    raw["edit"]["clamp_norm_factor"] = 1.5
    assert [s.stage_id for s in expand(parse_grid(raw, "g")).stages.values() if s.kind == "targets"] != \
        [targets[0].stage_id]


def test_slices_make_the_union_of_products_and_share_stages(tmp_path):
    raw = tiny_raw()
    raw["slices"] = [{"ft_types": ["lora", "full"]},           # the base product: 2 methods x 2 types
                     {"ft_types": ["lora"], "seeds": [0, 1]},  # seed 0 overlaps the first slice
                     {"methods": ["memit"], "layers": ["all"], "ft_types": ["dora"]}]
    plan = expand(parse_grid(raw, "g"))
    combos = {(r.values["method"], r.values["ft_type"], r.values["seed"], str(r.values["layers"])) for r in plan.runs}
    assert len(plan.runs) == len(combos) == 4 + 2 + 1  # the overlapping seed-0 LoRA runs are counted once
    assert ("memit", "dora", 0, "all") in combos and ("alphaedit", "lora", 1, "edited") in combos
    # one edit per method, shared across slices and seeds (the study edits once; only fine-tuning seeds vary)
    assert sum(1 for s in plan.stages.values() if s.kind == "edit") == 2
    raw["slices"] = [{"ft_typo": ["lora"]}]
    with pytest.raises(ConfigError, match=r"slices\[0\]\.ft_typo.*unknown key"):
        parse_grid(raw, "g")
    raw["slices"] = [{"ft_types": ["lorra"]}]
    with pytest.raises(ConfigError, match=r"slices\[0\].*lorra"):
        parse_grid(raw, "g")


def test_groups_key_skips_the_unedited_fine_tune_and_keep_is_checked():
    raw = tiny_raw()
    raw["groups"] = ["M", "M_ed", "M_ed_ft"]
    plan = expand(parse_grid(raw, "g"))
    kinds = [s.kind for s in plan.stages.values()]
    assert kinds.count("finetune") == 4 and kinds.count("evaluate") == 1 + 2 + 4
    assert all(set(r.groups) == {"M", "M_ed", "M_ed_ft"} for r in plan.runs)
    raw["groups"] = ["M", "M_ft"]
    with pytest.raises(ConfigError, match="must include M_ed, M_ed_ft"):
        parse_grid(raw, "g")
    raw["groups"] = ["M_ed", "M_ed_ft"]
    raw["keep"] = ["stats"]
    with pytest.raises(ConfigError, match="'keep'.*not a stage kind that stores a model"):
        parse_grid(raw, "g")
    raw["keep"] = ["finetune"]
    plan = expand(parse_grid(raw, "g"))
    assert all(s.config["keep_model"] for s in plan.stages.values() if s.kind == "finetune")


def test_preserve_axis_gives_each_strategy_its_edited_fine_tune_and_one_shared_m_ft():
    raw = tiny_raw()
    raw.update(methods=["memit"], ft_types=["lora"], preserve=["none", "freeze", "nullspace"])
    plan = expand(parse_grid(raw, "g"))
    assert len(plan.runs) == 3
    ft_edit = {r.values["preserve"]: plan.stages[r.stages["finetune_edit"]] for r in plan.runs}
    assert "preserve_strategy" not in ft_edit["none"].config["finetune"]  # plain runs keep their stage ids
    assert ft_edit["freeze"].config["finetune"]["preserve_strategy"] == "freeze"
    assert len({s.stage_id for s in ft_edit.values()}) == 3
    assert len({r.stages["finetune_base"] for r in plan.runs}) == 1
    raw["preserve"] = ["frieze"]
    with pytest.raises(ConfigError, match="'preserve'.*frieze"):
        parse_grid(raw, "g")


def test_dtype_enters_stage_ids_and_device_does_not():
    plain = expand(parse_grid(tiny_raw(), "g"))
    raw = tiny_raw()
    raw.update(dtype="bf16", device="cpu")
    plan = expand(parse_grid(raw, "g"))
    assert plan.grid.dtype == "bfloat16"
    for spec in plan.stages.values():
        if spec.kind != "base":
            assert spec.config["dtype"] == "bfloat16", spec.kind
        assert spec.resources["device"] == "cpu"
    assert not set(plan.stages) & (set(plain.stages) - {s for s, x in plain.stages.items() if x.kind == "base"})
    raw = tiny_raw()
    raw["device"] = "cpu"
    assert set(expand(parse_grid(raw, "g")).stages) == set(plain.stages)  # the device is no part of an id
    raw["dtype"] = "float8"
    with pytest.raises(ConfigError, match="'dtype'.*float8"):
        parse_grid(raw, "g")


def test_description_is_kept_as_one_line_and_changes_no_stage(tmp_path):
    raw = tiny_raw()
    raw["description"] = "What this grid\n  is for:\tdecay <b>at</b> 40 steps."
    grid = load_grid(write(tmp_path, raw))
    assert grid.description == "What this grid is for: decay <b>at</b> 40 steps."
    assert list(expand(grid).stages) == list(expand(load_grid(TINY)).stages)  # words, not settings
    raw["description"] = ["not", "text"]
    with pytest.raises(ConfigError, match="description"):
        load_grid(write(tmp_path, raw, "bad.yaml"))


def test_statistics_and_target_values_run_on_the_edits_resources_unless_given_their_own():
    """They were split out of the edit; a grid that sized its edit (e.g. 2 cores) must not see them drop to the
    1-core default. Their own entry wins, and resources never enter a stage id."""
    raw = tiny_raw()
    raw["resources"] = {"edit": {"num_cpus": 2, "memory_gb": 3}}
    plan = expand(parse_grid(raw, "g"))
    by_kind = {spec.kind: spec.resources for spec in plan.stages.values()}
    for kind in ("stats", "targets", "edit"):
        assert (by_kind[kind]["num_cpus"], by_kind[kind]["memory_gb"]) == (2, 3), kind
    assert by_kind["finetune"]["num_cpus"] == 1
    raw["resources"]["targets"] = {"num_cpus": 4}
    own = {spec.kind: spec.resources for spec in expand(parse_grid(raw, "g")).stages.values()}
    assert (own["targets"]["num_cpus"], own["stats"]["num_cpus"]) == (4, 2)
    assert set(expand(parse_grid(raw, "g")).stages) == set(expand(parse_grid(tiny_raw(), "g")).stages)
