#!/usr/bin/env bash
# Regenerate the envd RPC code from proto/ (E2B's spec/envd/*.proto).
#
#   pip install buf-bin 'protoc-gen-py==0.6.*' 'protoc-gen-connectrpc==0.12.*'
#   bash gateway/api/e2b/envd_rpc/generate.sh
#
# The generator versions match the protobuf-py and connectrpc runtimes the e2b SDK pins.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -r "$HERE/proto" "$WORK/proto"
cat > "$WORK/buf.yaml" <<'YAML'
version: v2
modules:
  - path: proto
YAML
cat > "$WORK/buf.gen.yaml" <<'YAML'
version: v2
plugins:
  - local: protoc-gen-py
    out: out
  - local: protoc-gen-connectrpc
    out: out
YAML
(cd "$WORK" && buf generate)
for service in process filesystem; do
    cp "$WORK/out/$service/${service}_pb.py" "$WORK/out/$service/${service}_connect.py" "$HERE/$service/"
done
echo "regenerated $HERE"
