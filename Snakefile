# diffrep: training-data replication in text-to-image diffusion models, end to end.
#   paper study:  snakemake --profile profiles/slurm          (config.yaml)
#   mini study:   snakemake --profile profiles/mini           (profiles/mini/study.yaml)
#   showcase:     snakemake --profile profiles/showcase       (profiles/showcase/study.yaml)
# See README.md; the data flow, layout and conventions are in docs/design.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/generate.smk"
include: "rules/metrics.smk"
include: "rules/figures.smk"
include: "rules/calibration.smk"
include: "rules/webscale.smk"
include: "rules/memorization.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
