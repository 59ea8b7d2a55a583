"""deploy/kubernetes, checked offline: every built-in object validates strictly against
the Kubernetes schemas (kubernetes-validate ships them), the kustomization names every
file, and the pod has what the stack needs: a memory-backed /dev/shm shared by the
executors and sized to the CPU tier, a GPU for the GPU executor, probes on the health
endpoints; the Service, the autoscaler, the InferencePool, its endpoint picker and the
route point at what exists (those three are CRDs, whose schemas are not shipped)."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
CRD_GROUPS = ("inference.networking.k8s.io/", "gateway.networking.k8s.io/")


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = kustomization["resources"]
    assert sorted(files) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    found = {}
    for name in files:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_every_built_in_object_validates_strictly(objects):
    checked = 0
    for doc in objects.values():
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        checked += 1
    assert checked >= 8
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        bad = {**objects[("Service", "apex")], "spec": {"ports": [{"port": "http"}]}}
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def pod(objects) -> dict:
    return objects[("Deployment", "apex-stack")]["spec"]["template"]


def containers(objects) -> dict[str, dict]:
    return {c["name"]: c for c in pod(objects)["spec"]["containers"]}


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_pod_shares_a_memory_backed_dev_shm_sized_to_the_cpu_tier(objects):
    volumes = {v["name"]: v for v in pod(objects)["spec"]["volumes"]}
    shm = volumes["shm"]["emptyDir"]
    assert shm["medium"] == "Memory"
    c = containers(objects)
    for name in ("cpu-executor", "gpu-executor"):
        mounts = {m["mountPath"]: m["name"] for m in c[name]["volumeMounts"]}
        assert mounts["/dev/shm"] == "shm", name
    tier_gb = float(flag(c["scheduler"]["command"], "--cpu-kv-gb"))
    size_gib = float(re.fullmatch(r"(\d+)Gi", shm["sizeLimit"]).group(1))
    assert size_gib > tier_gb
    limit_gib = float(c["cpu-executor"]["resources"]["limits"]["memory"].removesuffix("Gi"))
    assert limit_gib >= size_gib  # the tmpfs pages count against the pod's memory


def test_the_gpu_executor_asks_for_one_gpu_and_the_daemon_reaches_both_executors(objects):
    c = containers(objects)
    assert c["gpu-executor"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert not any(
        "nvidia.com/gpu" in x["resources"].get("limits", {})
        for n, x in c.items()
        if n != "gpu-executor"
    )
    command = c["scheduler"]["command"]
    for name, option in (("gpu-executor", "--gpu-executor"), ("cpu-executor", "--cpu-executor")):
        port = flag(c[name]["command"], "--port")
        assert flag(command, option) == f"127.0.0.1:{port}"
        assert c[name]["livenessProbe"]["grpc"]["port"] == int(port)


def test_probes_and_the_drain_fit_the_grace_period(objects):
    c = containers(objects)
    sched = c["scheduler"]
    ports = {p["name"]: p["containerPort"] for p in sched["ports"]}
    ready = sched["readinessProbe"]["httpGet"]
    assert ready["path"] == "/health" and ports[ready["port"]] == int(
        flag(sched["command"], "--http-port")
    )
    assert sched["livenessProbe"]["grpc"]["port"] == int(flag(sched["command"], "--port"))
    grace = float(flag(sched["command"], "--drain-grace-s"))
    period = pod(objects)["spec"]["terminationGracePeriodSeconds"]
    for name in ("cpu-executor", "gpu-executor"):  # they outlive the daemon's drain
        wait = float(c[name]["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert grace < wait < period, name


def test_service_autoscaler_pool_picker_and_route_point_at_what_exists(objects):
    labels = pod(objects)["metadata"]["labels"]
    c = containers(objects)
    names = {p["name"]: p["containerPort"] for p in c["scheduler"]["ports"]}
    svc = objects[("Service", "apex")]["spec"]
    assert svc["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in svc["ports"]} <= set(names)
    hpa = objects[("HorizontalPodAutoscaler", "apex-stack")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "apex-stack"
    metric = hpa["metrics"][0]["pods"]["metric"]["name"]
    assert f'"{metric}"' in (ROOT / "scheduler" / "api" / "metrics.py").read_text()
    pool = objects[("InferencePool", "apex")]["spec"]
    assert pool["selector"]["matchLabels"].items() <= labels.items()
    assert [p["number"] for p in pool["targetPorts"]] == [names["http"]]
    epp_svc = objects[("Service", pool["endpointPickerRef"]["name"])]["spec"]
    assert pool["endpointPickerRef"]["port"]["number"] in [p["port"] for p in epp_svc["ports"]]
    epp = objects[("Deployment", "apex-epp")]["spec"]["template"]["spec"]["containers"][0]
    assert flag(epp["args"], "--pool-name") == "apex"
    route = objects[("HTTPRoute", "apex")]["spec"]["rules"][0]["backendRefs"][0]
    assert (route["kind"], route["name"]) == ("InferencePool", "apex")
    # the picker reads the vllm: metrics our HTTP port serves
    metrics = (ROOT / "scheduler" / "api" / "metrics.py").read_text()
    for name in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert name in metrics
