# Tables and figures. Figures read only tables (and, for galleries and grids, images), so deleting
# results/{study}/figures and running `snakemake figures` re-runs no training or generation.


rule tables:
    input:
        unpack(get_table_inputs),
    output:
        summary=report(
            f"{R}/tables/summary.csv",
            category="Tables",
            caption="../report/summary.rst",
        ),
        weightdiff=report(
            f"{R}/tables/weightdiff.csv",
            category="Tables",
            caption="../report/weightdiff_table.rst",
        ),
        baselines=report(
            f"{R}/tables/baselines.csv",
            category="Tables",
            caption="../report/baselines.rst",
        ),
    log:
        f"{LOGS}/tables.log",
    conda:
        "../envs/figures.yaml"
    params:
        numerics=NUMERICS,
        study=STUDY,
        seed=config["seed"],
        ids=table_input_ids(),
        presets=measured_presets(),
        base_model=config["base_model"],
        fid=config["fid"]["enabled"],
        clipscore=config["clipscore"]["enabled"],
    script:
        "../scripts/tables.py"


rule summary_figure:
    input:
        summary=f"{R}/tables/summary.csv",
        baselines=f"{R}/tables/baselines.csv",
        similarity=similarity_tables(),
        baseline_matches=similarity_baseline_tables(),
        plans=duplication_plans(),
    output:
        png=report(
            f"{R}/figures/{{figure}}.png",
            category="Figures",
            caption="../report/summary_figure.rst",
        ),
        pdf=f"{R}/figures/{{figure}}.pdf",
    log:
        f"{LOGS}/figures/{{figure}}.log",
    wildcard_constraints:
        figure=_alternatives(dconf.SUMMARY_FIGURES),
    conda:
        "../envs/figures.yaml"
    params:
        study=STUDY,
        plans=duplication_plan_ids(),
        style=get_figure_style,
    script:
        "../scripts/figure.py"


rule gallery:
    input:
        matches=f"{R}/{{dataset}}/similarity/{{embedder}}/{{run}}/{{gen}}.parquet",
        generations=get_generations,
        images=f"resources/data/{{dataset}}/images",
        metadata=f"resources/data/{{dataset}}/metadata.parquet",
    output:
        png=report(
            f"{R}/figures/gallery/{{dataset}}/{{embedder}}/{{run}}/{{gen}}.png",
            category="Match galleries",
            subcategory="{dataset} / {embedder}",
            caption="../report/gallery.rst",
        ),
        pdf=f"{R}/figures/gallery/{{dataset}}/{{embedder}}/{{run}}/{{gen}}.pdf",
    log:
        f"{LOGS}/figures/gallery/{{dataset}}/{{embedder}}/{{run}}/{{gen}}.log",
    conda:
        "../envs/figures.yaml"
    params:
        study=STUDY,
        size=config["figures"]["gallery_size"],
        top_k=config["figures"]["gallery_top_k"],
        dpi=config["figures"]["dpi"],
    script:
        "../scripts/gallery.py"


rule weightdiff_figure:
    input:
        table=f"{R}/{{dataset}}/weightdiff/{{run}}.parquet",
    output:
        png=report(
            f"{R}/figures/weightdiff/{{dataset}}/{{run}}.png",
            category="Weight differences",
            caption="../report/weightdiff.rst",
        ),
        pdf=f"{R}/figures/weightdiff/{{dataset}}/{{run}}.pdf",
    log:
        f"{LOGS}/figures/weightdiff/{{dataset}}/{{run}}.log",
    conda:
        "../envs/figures.yaml"
    params:
        study=STUDY,
        style=get_common_style,
    script:
        "../scripts/weightdiff_figure.py"


rule sweep_grid:
    input:
        generations=get_sweep_generations,
    output:
        png=report(
            f"{R}/figures/grid/{{sweep}}.png",
            category="Sampling sweeps",
            caption="../report/grid.rst",
        ),
        pdf=f"{R}/figures/grid/{{sweep}}.pdf",
    log:
        f"{LOGS}/figures/grid/{{sweep}}.log",
    conda:
        "../envs/figures.yaml"
    params:
        study=STUDY,
        sweep=get_sweep_params,
        dpi=config["figures"]["dpi"],
    script:
        "../scripts/sweep_grid.py"


rule figures:
    default_target: False
    input:
        all_figures(),
