# unirank: `make serve` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
BUNDLE ?= artifacts/demo
# bearer token of POST /entities for the local demo; set your own anywhere else
ADMIN_TOKEN ?= demo-admin-token

.PHONY: venv serve test bench bench-quick demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,bench,dev]'
	touch $@

$(BUNDLE)/manifest.json: | venv
	$(BIN)/unirank build-demo --out $(BUNDLE)

demo: $(BUNDLE)/manifest.json

serve: venv $(BUNDLE)/manifest.json
	@echo "unirank on http://$(HOST):$(PORT)  (try, in another shell:)"
	@echo "  curl -s -X POST http://$(HOST):$(PORT)/rank -H 'content-type: application/json' \\"
	@echo "       -d '{\"task\": \"search\", \"country\": \"US\", \"query\": \"str\", \"k\": 5}'"
	@echo "  (POST /entities takes 'Authorization: Bearer $(ADMIN_TOKEN)')"
	UNIRANK_ADMIN_TOKEN=$(ADMIN_TOKEN) $(BIN)/unirank serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: venv $(BUNDLE)/manifest.json
	$(BIN)/unirank bench --bundle $(BUNDLE)

bench-quick: venv $(BUNDLE)/manifest.json
	$(BIN)/unirank bench --bundle $(BUNDLE) --quick --check

clean:
	rm -rf $(VENV) artifacts results *.egg-info
