# vmbackup: the README's two commands are `make demo` and `make test`.
# Both are idempotent and install what they need.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-system venv tools demo test lint fmt typecheck bench lab docs clean

setup: setup-system venv tools

setup-system:
	./scripts/setup-system.sh

venv:
	./scripts/setup-venv.sh

# kubectl 1.27 (kustomize v5) for tests/k8s, in tools/bin (scripts/install_kubectl.py).
tools: venv
	$(PY) -m scripts.install_kubectl

lab: setup
	$(PY) -m lab build

demo: setup lab
	$(PY) -m lab.demo

test: setup lab
	$(PY) -m ruff check .
	$(PY) -m mypy common repository repository_writer coordinator proxy_worker export file_restore vmbackup lab
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

fmt: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck: venv
	$(PY) -m mypy common repository repository_writer coordinator proxy_worker export file_restore vmbackup lab

bench: setup lab
	$(PY) -m bench.run_all

docs: venv
	$(PY) -m scripts.gen_config_docs
	$(PY) -m scripts.gen_metrics_docs

clean:
	rm -rf build .pytest_cache .mypy_cache lab/vcsim/bin tools/bin
