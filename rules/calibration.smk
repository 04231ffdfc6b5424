# Descriptor calibration: before a similarity threshold is trusted, measure how well the embedder
# tells augmented copies of training pictures from distinct pictures (diffrep.calibration). One
# job per measured dataset and embedder. With similarity.threshold: calibrated, the study's
# threshold for an embedder is the largest of its datasets' calibrated thresholds (study_threshold).


rule calibrate:
    input:
        unpack(get_calibration_inputs),
    output:
        scores=f"{R}/{{dataset}}/calibration/{{embedder}}/scores.parquet",
        table=report(
            f"{R}/{{dataset}}/calibration/{{embedder}}/table.csv",
            category="Calibration",
            caption="../report/calibration.rst",
        ),
        summary=f"{R}/{{dataset}}/calibration/{{embedder}}/summary.json",
    log:
        f"{LOGS}/calibration/{{dataset}}/{{embedder}}.log",
    benchmark:
        f"{BENCH}/calibration/{{dataset}}/{{embedder}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
        batch_size=config["resources"]["embed_batch_size"],
    params:
        numerics=NUMERICS,
        embedder=get_embedder,
        calibration=get_calibration_params,
    script:
        "../scripts/calibrate.py"


rule calibration_figure:
    input:
        scores=f"{R}/{{dataset}}/calibration/{{embedder}}/scores.parquet",
        table=f"{R}/{{dataset}}/calibration/{{embedder}}/table.csv",
    output:
        png=report(
            f"{R}/figures/calibration/{{dataset}}/{{embedder}}.png",
            category="Calibration",
            caption="../report/calibration.rst",
        ),
    log:
        f"{LOGS}/figures/calibration/{{dataset}}/{{embedder}}.log",
    conda:
        "../envs/figures.yaml"
    params:
        study=STUDY,
        style=get_common_style,
    script:
        "../scripts/calibration_figure.py"


rule study_threshold:
    input:
        summaries=get_study_threshold_inputs,
    output:
        threshold=f"{R}/calibration/{{embedder}}/threshold.json",
    log:
        f"{LOGS}/calibration/{{embedder}}/threshold.log",
    localrule: True
    conda:
        "../envs/figures.yaml"
    params:
        numerics=NUMERICS,
        datasets=get_study_threshold_datasets,
    script:
        "../scripts/study_threshold.py"
