"""diffrep: training-data replication in text-to-image diffusion models, as a Snakemake workflow."""

__version__ = "0.1.0"
