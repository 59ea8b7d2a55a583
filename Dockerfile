# One image for all three processes; docker-compose.yml picks the command of each.
# CPU build of torch by default; for NVIDIA hosts build with
#   --build-arg TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md Makefile ./
COPY protos ./protos
COPY common ./common
COPY dataplane ./dataplane
COPY launcher ./launcher
COPY scheduler ./scheduler
COPY gpu_executor ./gpu_executor
COPY cpu_executor ./cpu_executor
COPY clients ./clients
COPY benchmarks ./benchmarks

ARG TORCH_SPEC="torch==2.13.0"
RUN pip install --no-cache-dir ${TORCH_SPEC} \
    && pip install --no-cache-dir -e '.[executor,router]'
# The CPU kernels are compiled for the machine that runs them: at first start, into the
# cache volume, not at build time (-march=native on the build host could crash elsewhere).
ENV APEX_NATIVE_DIR=/cache/native APEX_HOME=/cache

EXPOSE 50051 8000 9400
CMD ["apex-scheduler", "--help"]
