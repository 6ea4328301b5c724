# Everything a developer (and CI) runs. `make test` installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := demo

.PHONY: install lint test bench docs demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[local,dev]"
	touch $@

lint: install
	$(VENV)/bin/ruff check daemon tests bench
	$(VENV)/bin/ruff format --check daemon tests bench
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

bench: install
	$(PY) -m bench

# Rewrite docs/configuration.md from the configuration's schema (tests/test_docs.py checks it).
docs: install
	$(PY) -m transcribed.config_docs docs/configuration.md

# Transcribe the bundled samples with the local engine (no key, no network), then show them.
demo: install
	rm -rf $(DEMO) && mkdir -p $(DEMO)/inbox && cp samples/*.mp3 $(DEMO)/inbox/
	$(VENV)/bin/transcribed run --once --backend local --inbox $(DEMO)/inbox \
		--outbox $(DEMO)/outbox --done $(DEMO)/done --failed $(DEMO)/failed --state-dir $(DEMO)/state \
		--set http.listen=off
	@for f in $(DEMO)/outbox/*.txt; do printf '\n== %s\n' "$$f"; cat "$$f"; done

clean:
	rm -rf $(VENV) $(DEMO) .mypy_cache .ruff_cache .pytest_cache
