"""The host a GPU is sold with: its CPU attention speed and the room for the CPU tier.

The shipped GPU profiles fix the card; what CPU attention can do and how many tokens the
CPU tier holds come from the host, and a T4 or an A10 is rented with 4 to 64 vCPUs and
16 to 256 GiB. A preset is a cloud instance's published vCPU and memory counts and its
processor's memory channels; from them:

    CPU attention rate = min((vCPUs - 2) x per-vCPU rate, socket DRAM bandwidth x 0.7)
    CPU tier           = memory - 6 GiB (OS, the three processes, weights staged on load)

The per-vCPU rate is our own kernel's: on this project's 2-vCPU VM it read 22-25 GB/s
of fp16 KV with both vCPUs at batch >= 8 (benchmarks/results/cpu_attention.json), so
11 GB/s a vCPU. Two vCPUs are left to the daemon and the executors' own threads. The
DRAM cap keeps a large host from scaling past its memory channels (0.7 of theoretical
is what a streaming read reaches on these sockets; assumption). Simulation inputs all:
measure the real host with `apexctl profile`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from scheduler.costs.profile import Profile

PER_VCPU_ATTENTION_RATE = 11e9  # bytes/s of KV read, our kernel, fp16, batch >= 8
RESERVED_VCPUS = 2
DRAM_EFFICIENCY = 0.7
RESERVED_MEMORY_GIB = 6.0


@dataclass(frozen=True)
class Host:
    name: str
    card: str
    vcpus: int
    memory_gib: float
    dram_gbs: float  # one socket's theoretical DRAM bandwidth
    source: str

    def __post_init__(self) -> None:
        if self.vcpus < 1 or self.memory_gib <= RESERVED_MEMORY_GIB or self.dram_gbs <= 0:
            raise ValueError(f"host {self.name}: implausible figures {self}")

    @property
    def attention_rate(self) -> float:
        cores = max(1, self.vcpus - RESERVED_VCPUS)
        return min(cores * PER_VCPU_ATTENTION_RATE, self.dram_gbs * 1e9 * DRAM_EFFICIENCY)

    @property
    def cpu_tier_bytes(self) -> float:
        return (self.memory_gib - RESERVED_MEMORY_GIB) * 2**30


CASCADE_LAKE = "Xeon 8259CL: 6 x DDR4-2933 a socket = 140.8 GB/s"
EPYC_ROME = "EPYC 7R32: 8 x DDR4-3200 a socket = 204.8 GB/s"
HOSTS = {
    h.name: h
    for h in (
        Host("g4dn.xlarge", "T4", 4, 16, 140.8, f"AWS: 4 vCPU, 16 GiB, 1 T4; {CASCADE_LAKE}"),
        Host("g4dn.16xlarge", "T4", 64, 256, 140.8, f"AWS: 64 vCPU, 256 GiB, 1 T4; {CASCADE_LAKE}"),
        Host("g5.xlarge", "A10", 4, 16, 204.8, f"AWS: 4 vCPU, 16 GiB, 1 A10G; {EPYC_ROME}"),
        Host("g5.16xlarge", "A10", 64, 256, 204.8, f"AWS: 64 vCPU, 256 GiB, 1 A10G; {EPYC_ROME}"),
    )
}


def on_host(profile: Profile, host: Host) -> Profile:
    """The card's profile with the host's CPU attention rate and CPU tier."""
    if not isinstance(profile, Profile):
        raise ValueError("a measured profile was measured on its host: --host is for spec profiles")
    per_token = profile.kv_bytes_per_token_layer * profile.num_layers
    return dataclasses.replace(
        profile,
        name=f"{profile.name}@{host.name}",
        device=f"{profile.device}; host {host.name} ({host.source})",
        cpu_attention_rate=host.attention_rate,
        cpu_kv_capacity_tokens=int(host.cpu_tier_bytes // per_token),
    )
