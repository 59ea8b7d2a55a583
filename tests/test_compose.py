"""docker-compose.yml and the Dockerfile, checked without a Docker engine: every command
they run exists and accepts the flags given, every path they name exists, and the IPC,
shared-memory, GPU and health wiring is what the executors need."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def expand(value: str) -> str:
    """${VAR:-default} -> default, ${VAR:?msg} -> VAR (as compose would, with VAR unset)."""
    value = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{([A-Z0-9_]+):\?[^}]*\}", r"\1", value)


REPLICAS = [
    ("scheduler", "gpu-executor", "cpu-executor"),
    ("scheduler-1", "gpu-executor-1", "cpu-executor-1"),
]
DAEMONS = [r[0] for r in REPLICAS]


def test_two_replicas_each_with_the_shared_memory_wiring(compose):
    svc = compose["services"]
    assert set(svc) == {name for r in REPLICAS for name in r} | {"router"}
    for sched_name, gpu_name, cpu_name in REPLICAS:
        cpu, gpu, sched = svc[cpu_name], svc[gpu_name], svc[sched_name]
        assert cpu["ipc"] == "shareable" and expand(cpu["shm_size"]).endswith("gb")
        assert gpu["ipc"] == f"service:{cpu_name}"  # the exchange and tier segments
        assert gpu["network_mode"] == f"service:{cpu_name}"
        assert gpu["depends_on"][cpu_name]["condition"] == "service_healthy"
        assert sched["depends_on"][gpu_name]["condition"] == "service_healthy"
        # each daemon drives its own replica's executors
        command = [expand(a) for a in sched["command"]]
        assert command[command.index("--gpu-executor") + 1] == f"{cpu_name}:50061"
        assert command[command.index("--cpu-executor") + 1] == f"{cpu_name}:50071"
        # the CPU tier asked of the daemon fits the shm given to the CPU executor
        tier_gb = float(command[command.index("--cpu-kv-gb") + 1])
        assert tier_gb < float(expand(cpu["shm_size"]).removesuffix("gb"))


def test_the_router_fronts_every_replica_s_http_api(compose):
    svc = compose["services"]
    router = [expand(a) for a in svc["router"]["command"]]
    urls = router[router.index("--worker-urls") + 1 : router.index("--policy")]
    for daemon in DAEMONS:
        command = svc[daemon]["command"]
        assert f"http://{daemon}:{command[command.index('--http-port') + 1]}" in urls
        assert svc["router"]["depends_on"][daemon]["condition"] == "service_healthy"
        assert not any(p.endswith(":8000") for p in svc[daemon]["ports"])  # behind it
    assert "8000:8000" in [expand(p) for p in svc["router"]["ports"]]
    assert router[router.index("--port") + 1] == "8000"


def test_stop_leaves_the_daemon_its_whole_drain_grace(compose):
    """compose stops a service before those it depends on, each within its
    stop_grace_period: the daemon's drain must fit inside it, executors still up."""
    for daemon, gpu, _ in REPLICAS:
        sched = compose["services"][daemon]
        command = [expand(a) for a in sched["command"]]
        grace = float(command[command.index("--drain-grace-s") + 1])
        period = sched["stop_grace_period"]
        assert period.endswith("s") and float(period.removesuffix("s")) >= grace + 5
        assert gpu in sched["depends_on"]


def test_every_command_exists_and_takes_its_flags(compose):
    for name, svc in compose["services"].items():
        argv = [expand(a) for a in svc["command"]]
        exe = BIN / argv[0]
        assert exe.is_file(), f"{name}: {argv[0]} is not an installed command"
        helptext = subprocess.run(
            [str(exe), "--help"], capture_output=True, text=True, timeout=120
        ).stdout
        for flag in (a for a in argv[1:] if a.startswith("--")):
            assert flag in helptext, f"{name}: {argv[0]} does not take {flag}"


def test_healthchecks_use_grpc_health(compose):
    for name, svc in compose["services"].items():
        test = svc["healthcheck"]["test"]
        if name == "router":  # HTTP, on the port it serves
            port = svc["command"][svc["command"].index("--port") + 1]
            assert f"127.0.0.1:{port}/health" in test[-1]
            continue
        assert test[:2] == ["CMD", "apexctl"] and test[-1] == "health", name
        port = test[test.index("--address") + 1].rsplit(":", 1)[1]
        cmd = svc["command"]
        assert cmd[cmd.index("--port") + 1] == port, f"{name} checks a port it does not serve"
    assert (BIN / "apexctl").is_file()


def test_model_volume_ports_and_tokens(compose):
    svc = compose["services"]
    for name in (n for r in REPLICAS for n in r[:2]):
        cmd = svc[name]["command"]
        model = cmd[cmd.index("--model") + 1]
        mounts = [expand(v).split(":")[1] for v in svc[name]["volumes"]]
        assert model in mounts, f"{name} reads {model}, which is not mounted"
    for daemon in DAEMONS:
        env = svc[daemon]["environment"]
        assert {"APEX_GENERATION_TOKEN", "APEX_ADMIN_TOKEN"} <= set(env)
        # measured profiles outlive the container: their folder is on a named volume
        volumes = [expand(v).split(":") for v in svc[daemon]["volumes"]]
        assert any(
            env["APEX_PROFILE_DIR"].startswith(dst + "/") and src in compose["volumes"]
            for src, dst, *_ in volumes
        )
        assert svc[daemon]["stop_grace_period"] == "40s"
    ports = [[expand(p) for p in svc[d]["ports"]] for d in DAEMONS]
    assert ports == [["50051:50051", "9400:9400"], ["50052:50051", "9401:9400"]]


def test_gpu_overlay_reserves_a_gpu_per_replica():
    overlay = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    ids = []
    for _, gpu, _ in REPLICAS:
        devices = overlay["services"][gpu]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        ids += devices[0]["device_ids"]
    assert ids == ["0", "1"]


def test_dockerfile_copies_what_exists():
    text = (ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (.+) \S+$", text, re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "torch==2.13.0" in text and ".[executor,router]" in text
