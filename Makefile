# The two commands of the README:
#   make mini   - create .venv and run the mini study (offline, 2 CPU cores)
#   make test   - create .venv and run the tests
#   make showcase - the showcase study: a tiny model that copies (offline, 2 CPU cores; docs/showcase.md)
#   make rehearsal - every paper rule on the full-size architectures, random weights (docs/rehearsal.md)
#   make slurm-profile - link profiles/slurm where `snakemake --profile slurm` finds it
#   mini and showcase end by comparing their results with the committed reference digests (docs/reference/);
#   make reference-<study> rewrites a study's digests after a change meant to change results.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: mini showcase rehearsal test install lint clean-mini clean-showcase clean-rehearsal \
	reference-mini reference-showcase reference-micro gpu-check slurm-profile

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

install: $(VENV)/.installed

mini: install
	$(BIN)/snakemake --profile profiles/mini
	$(BIN)/snakemake --profile profiles/mini --report results/mini/report.html
	$(BIN)/python -m diffrep.digests check profiles/mini/study.yaml docs/reference/mini.sha256

showcase: install
	$(BIN)/snakemake --profile profiles/showcase
	$(BIN)/snakemake --profile profiles/showcase --report results/showcase/report.html
	$(BIN)/python -m diffrep.digests check profiles/showcase/study.yaml docs/reference/showcase.sha256

# Several GB of models under resources/models/ and hours on 2 cores: not part of `make test`.
rehearsal: install
	$(BIN)/snakemake --profile profiles/rehearsal
	$(BIN)/snakemake --profile profiles/rehearsal --report results/rehearsal/report.html

# On a machine with a CUDA device: the micro study in its GPU precision, twice deterministic and once
# not; bit-identity, time ratio and the comparison with the CPU reference (docs/reproducibility.md).
gpu-check: install
	$(BIN)/python bench/gpu_check.py

# `snakemake --profile slurm`, as Snakemake users type it. Snakemake looks a bare profile name up in
# the working directory, then in $XDG_CONFIG_HOME/snakemake (~/.config/snakemake when unset), then
# in /etc/xdg/snakemake; this target links profiles/slurm into the second. A link, not a copy: the
# partition and account you set in profiles/slurm/config.yaml are the ones used, and a `git pull`
# updates the profile (move the checkout and the link breaks: run the target again). A profile of
# that name that is not this link is left alone, and the target stops saying so.
SNAKEMAKE_PROFILES ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake

slurm-profile:
	@mkdir -p "$(SNAKEMAKE_PROFILES)"
	@link="$(SNAKEMAKE_PROFILES)/slurm"; target="$(CURDIR)/profiles/slurm"; \
	if { [ -e "$$link" ] || [ -L "$$link" ]; } && [ "$$(readlink "$$link")" != "$$target" ]; then \
		echo "$$link exists and is not a link to $$target: move it aside and run make slurm-profile" \
			"again, or keep it and run snakemake --profile profiles/slurm" >&2; \
		exit 1; \
	fi; \
	ln -sfn "$$target" "$$link" && echo "$$link -> $$target: snakemake --profile slurm uses it"

test: install
	$(BIN)/python -m pytest -ra --durations=40 $(PYTEST_ARGS)

lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/

# After a change meant to change results: rewrite a study's reference digests from its finished
# run (docs/reproducibility.md); the commit says why the numbers changed.
reference-mini: install
	$(BIN)/python -m diffrep.digests write profiles/mini/study.yaml docs/reference/mini.sha256

reference-showcase: install
	$(BIN)/python -m diffrep.digests write profiles/showcase/study.yaml docs/reference/showcase.sha256

reference-micro: install
	$(BIN)/python -m pytest -q tests/test_e2e_micro.py --write-micro-reference

clean-mini:
	rm -rf results/mini logs/mini benchmarks/mini

clean-showcase:
	rm -rf results/showcase logs/showcase benchmarks/showcase

clean-rehearsal:
	rm -rf results/rehearsal logs/rehearsal benchmarks/rehearsal
