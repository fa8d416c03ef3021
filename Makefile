# unirank: `make serve` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The service's own settings win over these defaults, so `UNIRANK_PORT=9000 make serve` works too.
HOST ?= $(or $(UNIRANK_HOST),127.0.0.1)
PORT ?= $(or $(UNIRANK_PORT),8000)
BUNDLE ?= $(or $(UNIRANK_BUNDLE),artifacts/demo)
# bearer token of the admin endpoints for the local demo; set your own anywhere else
ADMIN_TOKEN ?= $(or $(UNIRANK_ADMIN_TOKEN),demo-admin-token)

.PHONY: venv serve test lint format docs docs-serve bench bench-quick demo clean

venv: $(VENV)/.installed

# pip shows what it downloads and builds (a first install takes a couple of minutes)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --upgrade pip
	$(BIN)/pip install --progress-bar on -e '.[train,bench,dev,remote]'
	touch $@

$(BUNDLE)/manifest.json: | venv
	$(BIN)/unirank build-demo --out $(BUNDLE)

demo: $(BUNDLE)/manifest.json

serve: venv $(BUNDLE)/manifest.json
	@echo "unirank on http://$(HOST):$(PORT)  (the demo page: http://$(HOST):$(PORT)/demo; the API: /docs)"
	@echo "try, in another shell:"
	@echo "  curl -s -X POST http://$(HOST):$(PORT)/rank -H 'content-type: application/json' \\"
	@echo "       -d '{\"task\": \"search\", \"country\": \"US\", \"query\": \"str\", \"k\": 5}'"
	@echo "  (admin endpoints take 'Authorization: Bearer $(ADMIN_TOKEN)'; Ctrl-C stops)"
	@UNIRANK_ADMIN_TOKEN=$(ADMIN_TOKEN) UNIRANK_DEMO_PAGE=$${UNIRANK_DEMO_PAGE:-1} $(BIN)/unirank serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT) || \
		[ $$? -eq 130 ]

# The service's tests that touch Redis, run a second time against a three-master Redis Cluster
REDIS_CLUSTER_TESTS := tests/test_service.py tests/test_entities.py tests/test_loop.py tests/test_rollout.py \
	tests/test_routing.py tests/test_api_contract.py tests/test_frontend_api.py tests/test_redis_pool.py \
	tests/test_rank_scores.py tests/test_autopipeline.py tests/test_cache.py tests/test_impressions.py

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider
	UNIRANK_TEST_REDIS=cluster $(BIN)/python -m pytest -q -p no:cacheprovider $(REDIS_CLUSTER_TESTS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The documentation site (docs/, mkdocs.yml): --strict fails on a broken link or a page left out of the nav
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: venv $(BUNDLE)/manifest.json
	$(BIN)/unirank bench --bundle $(BUNDLE)

bench-quick: venv $(BUNDLE)/manifest.json
	$(BIN)/unirank bench --bundle $(BUNDLE) --quick --check

clean:
	rm -rf $(VENV) artifacts results site *.egg-info
