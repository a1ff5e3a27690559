# Two commands for a newcomer, both safe to repeat: `make quickstart` trains the offline quickstart and
# `make test` runs the whole test suite and builds the docs site (mkdocs.yml). Each creates .venv (once; again
# when pyproject.toml changes) with the pinned torch and the project with every extra, as the README's
# step-by-step install does.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: quickstart test browser

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e ".[cpu,dev]"
	touch $(INSTALLED)

# Chromium for the search page's end-to-end test, from Debian's packages where it is missing. Elsewhere the
# test is skipped, saying so; under CI (CI=true) a failed install fails the run.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	{ $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q chromium chromium-driver; } \
	|| { [ -z "$$CI" ] || exit 1; echo "make: no Chromium here: the browser test will be skipped"; }

quickstart: $(INSTALLED)
	$(BIN)/python train.py

test: $(INSTALLED) browser
	$(BIN)/lint-imports
	$(BIN)/pytest
	$(BIN)/pytest -m slow
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
