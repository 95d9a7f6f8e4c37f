#!/usr/bin/env bash
# Generates the Python gRPC stubs of ChainQL's public API into DIR (default: ./generated).
# Needs the packages of requirements.txt: pip install -r requirements.txt
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/generated}"
python="${PYTHON:-python3}"
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I "$here/../../chainql/proto" \
  --python_out="$out" --grpc_python_out="$out" consensus.proto chainql.proto node.proto
