# The two commands of the README:
#   make mini   - create .venv and run the mini study (offline, 2 CPU cores)
#   make test   - create .venv and run the tests
#   make showcase - the showcase study: a tiny model that copies (offline, 2 CPU cores; docs/showcase.md)
#   make rehearsal - every paper rule on the full-size architectures, random weights (docs/rehearsal.md)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: mini showcase rehearsal test install lint clean-mini clean-showcase clean-rehearsal

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

showcase: install
	$(BIN)/snakemake --profile profiles/showcase
	$(BIN)/snakemake --profile profiles/showcase --report results/showcase/report.html

# Several GB of models under resources/models/ and hours on 2 cores: not part of `make test`.
rehearsal: install
	$(BIN)/snakemake --profile profiles/rehearsal
	$(BIN)/snakemake --profile profiles/rehearsal --report results/rehearsal/report.html

test: install
	$(BIN)/python -m pytest -ra --durations=40 $(PYTEST_ARGS)

lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/

clean-mini:
	rm -rf results/mini logs/mini benchmarks/mini

clean-showcase:
	rm -rf results/showcase logs/showcase benchmarks/showcase

clean-rehearsal:
	rm -rf results/rehearsal logs/rehearsal benchmarks/rehearsal
