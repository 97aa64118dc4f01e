#!/usr/bin/env bash
# Create the peer virtual envs used by the interop fixtures and the training benchmark:
#
#   benchmarks/_venvs/saelens   torch==2.13.0 + sae-lens==6.54.*      (SAE Lens)
#   benchmarks/_venvs/sparsify  torch==2.13.0 + eai-sparsify==1.3.*   (EleutherAI sparsify)
#
# Usage: bash benchmarks/peers/setup_peers.sh [saelens|sparsify]...   (default: both)
#
# Why torch first and a constraint file: this machine has a CPU wheel of torch 2.13.0 on disk.
# If torch were left to the resolver, a peer's dependency range could pull a multi-GB CUDA
# build from PyPI. So torch is installed alone first, and every later pip call in these envs
# runs with PIP_CONSTRAINT pinning torch==2.13.0: a dependency that cannot live with that
# torch fails loudly instead of replacing it.
#
# The pins below resolved against torch 2.13.0 with no conflict (no need to go below the
# newest 6.54.x / 1.3.x); the versions actually installed are printed at the end and written
# to benchmarks/_venvs/<name>/peer_versions.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENVS="$ROOT/benchmarks/_venvs"
TORCH_PIN="torch==2.13.0"
PYTHON="${PYTHON:-python3}"

mkdir -p "$VENVS"
CONSTRAINTS="$VENVS/constraints.txt"
printf '%s\n' "$TORCH_PIN" > "$CONSTRAINTS"

make_env() {
    local name="$1" spec="$2"
    local env="$VENVS/$name"
    echo "== $name: $spec"
    if [ ! -x "$env/bin/python" ]; then
        "$PYTHON" -m venv "$env"
    fi
    # The constraint file is given with -c and also through the environment, so that it
    # covers any pip that a package's build backend starts.
    PIP_CONSTRAINT="$CONSTRAINTS" "$env/bin/python" -m pip install --quiet -c "$CONSTRAINTS" "$TORCH_PIN"
    PIP_CONSTRAINT="$CONSTRAINTS" "$env/bin/python" -m pip install --quiet -c "$CONSTRAINTS" "$spec"
    "$env/bin/python" - "$env/peer_versions.txt" <<'EOF'
import sys
from importlib.metadata import version
names = ["torch", "sae-lens", "eai-sparsify", "transformer-lens", "transformers", "safetensors"]
lines = []
for n in names:
    try:
        lines.append(f"{n}=={version(n)}")
    except Exception:
        pass
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
    # Fail if torch was replaced despite the constraint (e.g. a build that bypassed it).
    "$env/bin/python" -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} != 2.13.0')"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(saelens sparsify)
for t in "${targets[@]}"; do
    case "$t" in
        saelens) make_env saelens "sae-lens==6.54.*" ;;
        sparsify) make_env sparsify "eai-sparsify==1.3.*" ;;
        *) echo "unknown peer $t (expected saelens or sparsify)" >&2; exit 2 ;;
    esac
done
