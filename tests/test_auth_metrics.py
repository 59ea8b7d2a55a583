"""Auth (bearer tokens, TLS) and Prometheus metrics on the real daemon."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from clients.apex_client import ApexClient
from common.grpc_server import check_health
from launcher.stack import free_port
from tests.factories import BIN, running_stack

PROMPT = [0, 45, 99, 301, 7]


@pytest.fixture(scope="module")
def secured(models, tmp_path_factory):
    args = [
        "--generation-token",
        "gen-secret",
        "--admin-token",
        "admin-secret",
        "--metrics-port",
        str(free_port()),
    ]
    with running_stack(
        models["tiny"], tmp_path_factory.mktemp("auth"), scheduler_args=args
    ) as stack:
        stack.metrics_port = int(args[-1])
        yield stack


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def test_generation_needs_its_token(secured):
    with ApexClient(secured.address, timeout=30) as c:
        assert code_of(lambda: c.generate(PROMPT, max_tokens=2)) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            code_of(lambda: list(c.generate_stream(PROMPT, max_tokens=2)))
            == grpc.StatusCode.UNAUTHENTICATED
        )
    with ApexClient(secured.address, timeout=30, token="admin-secret") as c:
        assert code_of(lambda: c.generate(PROMPT, max_tokens=2)) == grpc.StatusCode.UNAUTHENTICATED
    with ApexClient(secured.address, timeout=30, token="gen-secret") as c:
        assert len(c.generate(PROMPT, max_tokens=3, temperature=0.0).token_ids) >= 1
        assert code_of(c.status) == grpc.StatusCode.UNAUTHENTICATED  # admin needs its own


def test_admin_needs_its_token_and_health_reflection_stay_open(secured):
    with ApexClient(secured.address, timeout=30, token="admin-secret") as c:
        assert c.status().model == "tiny"
    assert check_health(secured.address)
    with grpc.insecure_channel(secured.address) as ch:
        services = ProtoReflectionDescriptorDatabase(ch).get_services()
    assert {"apex.v1.Generation", "apex.v1.Admin"} <= set(services)


def test_apexctl_explains_a_refused_token(secured):
    env = dict(os.environ, APEX_ADDRESS=secured.address, APEX_TOKEN="wrong")
    r = subprocess.run(
        [str(BIN / "apexctl"), "status"], capture_output=True, text=True, timeout=30, env=env
    )
    assert r.returncode != 0 and "refused the call (invalid bearer token)" in r.stderr
    assert "Traceback" not in r.stderr


def test_apexctl_reads_its_config_file(secured, tmp_path):
    conf = tmp_path / "apexctl.ini"
    conf.write_text(f"[apexctl]\naddress = {secured.address}\ntoken = admin-secret\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    r = subprocess.run(
        [str(BIN / "apexctl"), "--config", str(conf), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert '"model": "tiny"' in r.stdout


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name}{labels} not in the scrape"
    return float(m.group(1))


def test_metrics_follow_the_work(secured):
    before = scrape(secured.metrics_port)
    with ApexClient(secured.address, timeout=30, token="gen-secret") as c:
        for _ in range(3):
            c.generate(PROMPT, max_tokens=5, temperature=0.0, ignore_eos=True)
        with pytest.raises(grpc.RpcError):
            c.generate([], max_tokens=1)  # invalid: never reaches the engine
    after = scrape(secured.metrics_port)
    gen = "apex_generated_tokens_total"
    assert metric(after, gen) - metric(before, gen) == 15
    assert metric(after, "apex_requests_finished_total", '{finish_reason="length"}') >= 3
    assert metric(after, "apex_time_to_first_token_seconds_count") >= 3
    assert metric(after, "apex_time_per_output_token_seconds_count") >= 3
    assert metric(after, "apex_kv_blocks_total", '{tier="gpu"}') > 0
    assert metric(after, "apex_kv_blocks_used", '{tier="gpu"}') == 0
    assert metric(after, "apex_queue_depth") == 0
    assert metric(after, "apex_iterations_total", '{strategy="gpu-only"}') >= 15
    for name in (
        "apex_preemptions_total",
        "apex_migrations_total",
        "apex_tokens_per_second",
        "apex_iteration_seconds_bucket",
        "apex_draining",
        "apex_predictor_mape",
        "apex_profile_mape",
        "apex_profile_calibration",
        'apex_policy{policy="apex"}',
        "apex_predictor_relative_error_bucket",
    ):
        assert name in after
    with ApexClient(secured.address, timeout=30, token="admin-secret") as c:
        assert c.status().predictor_samples >= 15


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1/localhost: (key, cert)."""
    key, cert = folder / f"{name}-key.pem", folder / f"{name}-cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def test_tls(models, tmp_path):
    key, cert = self_signed(tmp_path, "server")
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with running_stack(models["tiny"], tmp_path / "logs", scheduler_args=args) as stack:
        with ApexClient(stack.address, timeout=30, tls_ca=str(cert)) as c:
            assert len(c.generate(PROMPT, max_tokens=2, temperature=0.0).token_ids) >= 1
        with ApexClient(stack.address, timeout=5) as c:  # plaintext to a TLS port
            assert code_of(c.model_info) == grpc.StatusCode.UNAVAILABLE


def test_tls_mistakes_are_one_line_that_names_the_file(models, tmp_path):
    key, cert = self_signed(tmp_path, "a")
    other_key, _ = self_signed(tmp_path, "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    armored = tmp_path / "armored.pem"
    armored.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    missing = tmp_path / "missing.pem"
    cases = [
        (missing, key, f"--tls-cert {missing}: no such file"),
        (cert, missing, f"--tls-key {missing}: no such file"),
        (garbage, key, f"--tls-cert {garbage}: not a PEM certificate"),
        (cert, garbage, f"--tls-key {garbage}: not a PEM private key"),
        (armored, key, f"--tls-cert {armored} / --tls-key {key}: not a valid certificate"),
        (cert, other_key, f"--tls-key {other_key} does not belong to the certificate"),
        (key, cert, f"--tls-cert {key} holds a private key, not a certificate"),
    ]
    for cert_file, key_file, message in cases:
        r = subprocess.run(
            [
                str(BIN / "apex-scheduler"),
                "--model",
                str(models["tiny"]),
                "--port",
                str(free_port()),
                "--gpu-executor",
                f"127.0.0.1:{free_port()}",  # nothing there: it must not get that far
                "--tls-cert",
                str(cert_file),
                "--tls-key",
                str(key_file),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        err = r.stderr.strip()
        assert r.returncode != 0 and message in err, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "bind" not in err, err
    # apex serve takes the same options, and says the same before it starts anything.
    swapped = ["--tls-cert", str(key), "--tls-key", str(cert), "--port", str(free_port())]
    r = subprocess.run(
        [str(BIN / "apex"), "serve", "--model", str(models["tiny"]), *swapped],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "holds a private key, not a certificate" in r.stderr, r.stderr
