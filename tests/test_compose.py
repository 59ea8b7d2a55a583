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
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", r"\1", value)


def test_three_services_with_the_shared_memory_wiring(compose):
    svc = compose["services"]
    assert set(svc) == {"scheduler", "gpu-executor", "cpu-executor"}
    cpu, gpu = svc["cpu-executor"], svc["gpu-executor"]
    assert cpu["ipc"] == "shareable" and expand(cpu["shm_size"]).endswith("gb")
    assert gpu["ipc"] == "service:cpu-executor"  # the exchange and tier segments
    assert gpu["network_mode"] == "service:cpu-executor"
    assert gpu["depends_on"]["cpu-executor"]["condition"] == "service_healthy"
    assert svc["scheduler"]["depends_on"]["gpu-executor"]["condition"] == "service_healthy"
    # the CPU tier asked of the daemon fits the shm given to the CPU executor
    sched = [expand(a) for a in svc["scheduler"]["command"]]
    tier_gb = float(sched[sched.index("--cpu-kv-gb") + 1])
    assert tier_gb < float(expand(cpu["shm_size"]).removesuffix("gb"))


def test_stop_leaves_the_daemon_its_whole_drain_grace(compose):
    """compose stops a service before those it depends on, each within its
    stop_grace_period: the daemon's drain must fit inside it, executors still up."""
    sched = compose["services"]["scheduler"]
    command = [expand(a) for a in sched["command"]]
    grace = float(command[command.index("--drain-grace-s") + 1])
    period = sched["stop_grace_period"]
    assert period.endswith("s") and float(period.removesuffix("s")) >= grace + 5
    assert "gpu-executor" in sched["depends_on"]


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
        assert test[:2] == ["CMD", "apexctl"] and test[-1] == "health", name
        port = test[test.index("--address") + 1].rsplit(":", 1)[1]
        cmd = svc["command"]
        assert cmd[cmd.index("--port") + 1] == port, f"{name} checks a port it does not serve"
    assert (BIN / "apexctl").is_file()


def test_model_volume_ports_and_tokens(compose):
    svc = compose["services"]
    for name in ("scheduler", "gpu-executor"):
        cmd = svc[name]["command"]
        model = cmd[cmd.index("--model") + 1]
        mounts = [expand(v).split(":")[1] for v in svc[name]["volumes"]]
        assert model in mounts, f"{name} reads {model}, which is not mounted"
    env = svc["scheduler"]["environment"]
    assert {"APEX_GENERATION_TOKEN", "APEX_ADMIN_TOKEN"} <= set(env)
    # measured profiles outlive the container: their folder is on a named volume
    volumes = [expand(v).split(":") for v in svc["scheduler"]["volumes"]]
    assert any(
        env["APEX_PROFILE_DIR"].startswith(dst + "/") and src in compose["volumes"]
        for src, dst, *_ in volumes
    )
    ports = [expand(p) for p in svc["scheduler"]["ports"]]
    assert "50051:50051" in ports and "9400:9400" in ports
    assert svc["scheduler"]["stop_grace_period"] == "40s"


def test_gpu_overlay_reserves_a_gpu():
    overlay = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    devices = overlay["services"]["gpu-executor"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_dockerfile_copies_what_exists():
    text = (ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (.+) \S+$", text, re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "torch==2.13.0" in text and ".[executor]" in text
