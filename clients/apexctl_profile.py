"""apexctl profile: measure this machine's profile on the running stack, plot it.

The daemon runs the probes (the server must be idle) and saves the profile where it
looks at start; this command shows the progress, writes a copy as JSON and the curves
as PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from apex.v1 import admin_pb2

from clients.apex_client import ApexClient
from clients.cli_output import pyplot


def add_parser(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("profile", help="measure this machine's profile on the running stack")
    pr.add_argument("--quick", action="store_true", help="fewer points and repeats")
    pr.add_argument("--out", type=Path, default=Path("profile.json"), help="JSON copy")
    pr.add_argument("--plot", type=Path, default=None, help="PNG (default: --out as .png)")


def bar(done: int, total: int, stage: str, width: int = 30) -> str:
    filled = round(width * done / max(total, 1))
    return f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {stage[:60]:60}"


def cmd_profile(client: ApexClient, args: argparse.Namespace) -> int:
    profile, path = None, ""
    calls = client.admin.Profile(
        admin_pb2.ProfileRequest(quick=args.quick), timeout=None, metadata=client.metadata
    )
    for p in calls:
        sys.stderr.write(bar(p.done, p.total, p.stage))
        sys.stderr.flush()
        if p.profile_json:
            profile, path = json.loads(p.profile_json), p.path
    sys.stderr.write("\n")
    if profile is None:
        raise SystemExit("apexctl profile: the daemon sent no profile")
    args.out.write_text(json.dumps(profile, indent=1))
    png = args.plot or args.out.with_suffix(".png")
    plotted = plot_profile(profile, png)
    print(f"profile {profile['name']} ({profile['key']})")
    print(f"saved by the daemon to {path}; it is loaded now and at every start")
    print(f"copy: {args.out}" + (f"; curves: {png}" if plotted else ""))
    return 0


def plot_profile(profile: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False

    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    lin = profile["linear"]
    ax[0, 0].plot(lin["tokens"], [s * 1e3 for s in lin["seconds"]], "o-")
    ax[0, 0].set(
        xscale="log",
        xlabel="tokens in the batch",
        ylabel="ms per layer",
        title="pre + post attention (linear layers)",
    )
    for a, kind, title in ((ax[0, 1], "gpu_attention", "GPU"), (ax[1, 0], "cpu_attention", "CPU")):
        g = profile.get(kind)
        if not g:
            a.set_title(f"{title} attention: not measured")
            continue
        for r, row in zip(g["rows"], g["seconds"], strict=True):
            a.plot(g["context"], [s * 1e3 for s in row], "o-", label=f"{r} rows")
        a.set(
            xscale="log",
            xlabel="context tokens per row",
            ylabel="ms per layer",
            title=f"{title} decode attention",
        )
        a.legend(fontsize=7)
    tr = profile["transfer"]
    ax[1, 1].plot(tr["bytes"], [s * 1e3 for s in tr["seconds"]], "o-")
    ax[1, 1].set(
        xscale="log",
        yscale="log",
        xlabel="bytes each way",
        ylabel="ms",
        title="transfer device <-> host",
    )
    fig.suptitle(f"{profile['device']} / {profile['model']} ({profile['measured_at']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
