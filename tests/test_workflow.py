"""The workflow as a user meets it: dry runs of each study, config errors before any job, lint."""

import re

import pytest
import yaml

from conftest import REPO, job_counts, load_yaml, snakemake


def test_paper_dry_run_on_a_fresh_clone(workflow_copy):
    """No data, no weights: `snakemake -n` lists every job of the paper study."""
    assert not (workflow_copy / "resources").exists()
    proc = snakemake(["-n"], cwd=workflow_copy, check=True)
    counts = job_counts(proc.stdout)
    assert counts["finetune"] == 24
    # sd21, sscd_disc_large, fid_inception, blip, clip + the sampler comparison's pretrained models
    # (sd_turbo, sdxl, sdxl_turbo, sd35_medium) + the web-scale search's sd14
    assert counts["fetch_model"] == 10
    assert counts["prepare_dataset"] == 2
    # shared things are computed once per dataset, never per run
    assert counts["embed_train"] == 2 and counts["fid_reference"] == 2
    assert counts["blip_captions"] == 1  # Imagenette only
    # + sweep cells, not measured: SD 2.1 36 (2 runs), SD-Turbo 6, SDXL 24, SDXL-Turbo 4, SD 3.5 Medium 24
    assert counts["generate"] == counts["embed_generations"] + 36 + 6 + 24 + 4 + 24
    # the sampler comparison: one grid per model (SD 2.1, SD-Turbo, SDXL, SDXL-Turbo, SD 3.5 Medium)
    assert counts["sweep_grid"] == 5 and "llm_captions" not in counts
    assert counts["retrieve"] == counts["fid"] == counts["clipscore"] == 33
    assert counts["clipscore_train_baseline"] == 2  # upstream's clipscore_bg, once per dataset


def test_mini_and_micro_dry_run(workflow_copy):
    mini = job_counts(snakemake(["-n", "--profile", "profiles/mini"], cwd=workflow_copy, check=True).stdout)
    assert 6 <= mini["finetune"] <= 8
    # mini_sd, the FID Inception and the tiny SDXL-Turbo (a pretrained run and its grid); the
    # memorization lane (mini_sd_planted) is not in the default target
    assert mini["build_model"] == 3 and "fetch_model" not in mini
    assert not any(rule.startswith("memorization") for rule in mini)
    assert mini["sweep_grid"] == 2 and mini["generate"] == mini["embed_generations"] + 8 + 6
    micro = job_counts(
        snakemake(
            ["-n", "--configfile", "tests/micro/config.yaml", "--replace-workflow-config"],
            cwd=workflow_copy,
            check=True,
        ).stdout
    )
    assert micro["finetune"] == 2


def test_micro_with_upstream_metric_conventions_dry_runs(tmp_path, workflow_copy):
    """clipscore and fid with convention upstream and any CLIP folder: one training-set CLIP baseline for
    the dataset, on its caption [0] file."""
    cfg = load_yaml(REPO / "tests/micro/config.yaml")
    cfg["models"]["clip_vit_b16"] = {
        "kind": "clip",
        "sources": [{"type": "huggingface", "repo": "openai/clip-vit-base-patch16"}],
    }
    cfg["clipscore"] = {"enabled": True, "model": "clip_vit_b16", "convention": "upstream"}
    cfg["fid"] = {**cfg["fid"], "convention": "upstream"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake(
        ["-n", "-p", "--configfile", str(path), "--replace-workflow-config"], cwd=workflow_copy, check=True
    )
    counts = job_counts(proc.stdout)
    assert (
        counts["clipscore_train_baseline"] == 1 and counts["clipscore"] == counts["fid"] == counts["retrieve"]
    )
    assert "results/micro/micro_shapes/clipscore/train_baseline.json" in proc.stdout
    assert "results/micro/micro_shapes/captions/instancelevel_blip.json" in proc.stdout


def test_mini_profile_does_not_inherit_paper_models(workflow_copy):
    proc = snakemake(
        ["-n", "--profile", "profiles/mini", "--list-target-rules"], cwd=workflow_copy, check=True
    )
    out = snakemake(["-n", "--profile", "profiles/mini"], cwd=workflow_copy, check=True).stdout
    assert "resources/models/sd21" not in out and "laion10k" not in out
    assert "results/mini/" in out and "results/paper/" not in out
    assert "finetune" in proc.stdout


def _run_with_config(tmp_path, workflow_copy, cfg):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return snakemake(["-n", "--configfile", str(path), "--replace-workflow-config"], cwd=workflow_copy)


def test_unknown_top_level_key_is_named(workflow_copy):
    proc = snakemake(["-n", "--config", "bogus_key=1"], cwd=workflow_copy)
    assert proc.returncode != 0
    assert "'bogus_key' was unexpected" in proc.stderr + proc.stdout


def test_nested_overrides_by_config_are_explained_and_by_a_second_configfile_work(tmp_path, workflow_copy):
    """`--config` turns a nested value into a string: the dry run stops with the schema error and says
    why and what works. What works (README, Configuration): a second config file after the study's,
    merged into it, so one nested key changes and its siblings stay."""
    proc = snakemake(
        ["-n", "--profile", "profiles/mini", "--config", "training={max_train_steps: 10}"], cwd=workflow_copy
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert (
        "training.max_train_steps: '10' is a string, where the schema asks for integer. `snakemake --config` "
        "passes every value nested inside a mapping as a string" in out
    )
    assert "--configfile profiles/mini/study.yaml my-overrides.yaml" in out
    overrides = tmp_path / "my-overrides.yaml"
    overrides.write_text("webscale:\n  collections:\n    mini_web:\n      shard_size: 125\n")
    mini = ["-n", "--profile", "profiles/mini"]
    before = job_counts(snakemake(mini, cwd=workflow_copy, check=True).stdout)
    study_then_overrides = ["--configfile", "profiles/mini/study.yaml", str(overrides)]
    after = job_counts(snakemake(mini + study_then_overrides, cwd=workflow_copy, check=True).stdout)
    # the mini's 1000 pretraining pictures: 4 shards of 250, then 8 of 125; pretraining_of is kept
    assert (before["download_shard"], after["download_shard"]) == (4, 8)
    assert after["finetune"] == before["finetune"]


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (
            lambda c: c["experiments"][0].update(duplication=["dup_bth"]),
            ["'dup_bth' is not one of ['nodup', 'dup_both', 'dup_image']"],
        ),
        (
            lambda c: c["training"].update(max_train_steps="many"),
            ["'many' is not of type 'integer'", "max_train_steps"],
        ),
        (
            lambda c: c["training"].update(learnig_rate=1e-4),
            ["'learnig_rate' was unexpected"],
        ),
        (
            lambda c: c["experiments"][3].update(conditioning=["nolevel"]),
            [
                "Invalid configuration",
                "train_mitigations",
                "train_mitigation 'allcaps' with conditioning 'nolevel'",
            ],
        ),
        (lambda c: c.update(experiments=[]), ["should be non-empty", "experiments"]),
    ],
)
def test_config_errors_stop_before_any_job(tmp_path, workflow_copy, paper_config, edit, fragments):
    edit(paper_config)
    proc = _run_with_config(tmp_path, workflow_copy, paper_config)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for fragment in fragments:
        assert fragment in out, out[-3000:]
    assert "Job stats" not in out


def test_lint_is_clean(workflow_copy):
    proc = snakemake(["--lint"], cwd=workflow_copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_every_rule_has_a_log(workflow_copy):
    """`--lint` checks it too; this names the rule. Aggregate target rules have no job to log."""
    import re

    targets = {"all", "models", "data", "finetune_all", "generate_all", "figures", "memorization"}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", smk.read_text(), re.M):
            if name in targets:
                continue
            assert "\n    log:" in "\n" + body, f"{smk.name}: rule {name} has no log"
            assert "\n    conda:" in "\n" + body, f"{smk.name}: rule {name} has no conda env"


def test_snakefmt_clean():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules/"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_atomic_outputs_are_readable_by_the_group_and_left_whole(tmp_path):
    from diffrep.fileio import atomic_path

    target = tmp_path / "sub" / "table.csv"
    with atomic_path(target, suffix=".csv") as tmp:
        tmp.write_text("a\n1\n")
    assert target.read_text() == "a\n1\n" and (target.stat().st_mode & 0o777) == 0o644
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "a\n1\n" and [p.name for p in target.parent.iterdir()] == ["table.csv"]


@pytest.fixture(scope="module")
def complete_micro(tmp_path_factory):
    """A micro study that Snakemake sees as complete (every output faked, metadata recorded)."""
    from conftest import MICRO, copy_workflow
    from test_figures import _fake_study

    wf = copy_workflow(tmp_path_factory.mktemp("complete"))
    _fake_study(wf)
    snakemake(["--touch", "--cores", "1", *MICRO], cwd=wf, check=True)
    return wf


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit, expected",
    [
        (  # the retrieve and train_baseline rules get the threshold (and their identity) through params
            lambda c: c.setdefault("similarity", {}).update(threshold=0.6),
            {"train_baseline": 1, "retrieve": 3, "tables": 1, "summary_figure": 5, "gallery": 3, "all": 1},
        ),
        (  # a new sweep cell: its generation and the grid, which names its folders through params
            lambda c: c["sweeps"]["samplers"].update(scheduler=["ddim", "euler", "dpmsolver++"]),
            {"generate": 1, "sweep_grid": 1, "all": 1},
        ),
        (  # a figure's own option: that figure only
            lambda c: (
                c.setdefault("figures", {})
                .setdefault("per_figure", {})
                .update(duplicated_vs_not={"palette": "colorblind"})
            ),
            {"summary_figure": 1, "all": 1},
        ),
    ],
    ids=["similarity_threshold", "sweep_cell", "figure_option"],
)
def test_a_config_edit_reruns_exactly_the_affected_jobs(complete_micro, tmp_path, edit, expected):
    from conftest import MICRO

    assert job_counts(snakemake(["-n", *MICRO], cwd=complete_micro, check=True).stdout) == {}
    cfg = load_yaml(REPO / "tests/micro/config.yaml")
    edit(cfg)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake(
        ["-n", "--configfile", str(path), "--replace-workflow-config"], cwd=complete_micro, check=True
    )
    assert job_counts(proc.stdout) == expected


MINI = ["--configfile", "profiles/mini/study.yaml", "--replace-workflow-config"]


@pytest.fixture(scope="module")
def complete_mini(tmp_path_factory):
    """A mini study that Snakemake sees as complete (every output faked, metadata recorded)."""
    from conftest import copy_workflow
    from test_figures import _fake_study

    wf = copy_workflow(tmp_path_factory.mktemp("complete_mini"))
    _fake_study(wf, "profiles/mini/study.yaml")
    snakemake(["--touch", "--cores", "1", *MINI], cwd=wf, check=True)
    return wf


def dry_run_jobs(stdout: str) -> set[tuple[str, str]]:
    """(rule, outputs) of every job a dry run lists (outputs "" for a rule without any)."""
    jobs, rule = set(), None
    for line in stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\S+):$", line):
            rule = m.group(1)
            jobs.add((rule, ""))
        elif (m := re.match(r"^\s+output: (.*)$", line)) and rule:
            jobs.discard((rule, ""))
            jobs.add((rule, m.group(1)))
            rule = None
    return jobs


# The mini's finetunes trained on a dup_both or dup_image plan; its other two (nodup.instancelevel_blip.none,
# nodup.classlevel.none) sample every picture alike whatever dup_weight says.
MINI_DUPLICATING_FINETUNES = [
    "dup_both.classlevel.none",
    "dup_both.instancelevel_blip.allcaps",
    "dup_both.instancelevel_blip.gaussnoise",
    "dup_both.instancelevel_blip.none",
    "dup_image.instancelevel_blip.none",
]


@pytest.mark.slow
def test_a_dup_weight_edit_reruns_only_the_duplicating_plans_and_their_descendants(complete_mini, tmp_path):
    """duplication.dup_weight 5 -> 4 in the mini: the dup_both and dup_image plans, the five finetunes
    trained on them and everything downstream of those, exactly; not the nodup plan nor its finetunes."""
    assert dry_run_jobs(snakemake(["-n", *MINI], cwd=complete_mini, check=True).stdout) == set()
    cfg = load_yaml(REPO / "profiles/mini/study.yaml")
    assert cfg["duplication"]["dup_weight"] == 5
    cfg["duplication"]["dup_weight"] = 4
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    edit = ["-n", "--configfile", str(path), "--replace-workflow-config"]
    edited = dry_run_jobs(snakemake(edit, cwd=complete_mini, check=True).stdout)
    plans = [f"results/mini/shapes/duplication/{style}.parquet" for style in ("dup_both", "dup_image")]
    assert sorted(out for rule, out in edited if rule == "duplication_plan") == plans
    models = sorted(out for rule, out in edited if rule == "finetune")
    assert models == [f"results/mini/shapes/models/{name}" for name in MINI_DUPLICATING_FINETUNES]
    # and their descendants, no other job: the set Snakemake plans when told those two plans changed
    forced = snakemake(["-n", *MINI, "--forcerun", *plans], cwd=complete_mini, check=True).stdout
    assert edited == dry_run_jobs(forced) and len(edited) == 68
