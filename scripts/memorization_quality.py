"""Rule memorization_quality: FID and CLIP score of a preset's general-prompt generations.

FID needs the benchmark's fid_dataset (and fid enabled), CLIP score clipscore.enabled; a missing one
is written as skipped.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.workflow import log, start_job

start_job(snakemake)


from diffrep.fileio import atomic_path  # noqa: E402

out = Path(snakemake.output.summary)
result = {"fid": "skipped", "clipscore": "skipped"}
if snakemake.input.get("reference"):
    from diffrep.fid import fid_of_generations

    result.update(
        fid_of_generations(
            snakemake.input.generations,
            snakemake.input.reference,
            snakemake.input.dir,
            out.with_name(f".{out.stem}.fid.json"),
            snakemake.params.resolution,
            batch_size=snakemake.resources.batch_size,
            convention=snakemake.params.convention,
        )
    )
if snakemake.input.get("clip"):
    from diffrep.clipscore import clipscore_of_generations

    clip = clipscore_of_generations(
        snakemake.input.generations,
        snakemake.input.clip,
        out.with_name(f".{out.stem}.clip.json"),
        snakemake.params.clip_model,
        convention=snakemake.params.clip_convention,
    )
    result.update(clipscore=clip["clipscore"], clip_n=clip["n"])
with atomic_path(out, suffix=".json") as tmp:
    tmp.write_text(json.dumps(result, indent=1) + "\n")
log.info("quality %s", result)
