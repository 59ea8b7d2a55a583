#!/usr/bin/env bash
# Wheels for what the lent GPU machine's image lacks, for its Python (3.12, x86_64
# manylinux), into gpu_wheels/ (git-ignored; the device run carries it, 64 MiB at most).
# The image brings torch, transformers, triton and onnxruntime; these are the rest the
# stack and the check import. Run here, where the package index is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf gpu_wheels && mkdir gpu_wheels
python3 -m pip download --quiet --dest gpu_wheels --only-binary=:all: \
    --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --implementation cp \
    "grpcio==1.85.1" "grpcio-health-checking==1.85.1" "grpcio-reflection==1.85.1" \
    "protobuf==7.36.2" "prometheus-client==0.26.0" "fastapi==0.165.0" "uvicorn==0.54.0" \
    "httptools==0.9.0" "jinja2==3.1.6" "openai==3.57.0" "pytest==9.2.0"
du -sh gpu_wheels
