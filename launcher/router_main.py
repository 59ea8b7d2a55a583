"""The router process as `apex serve --replicas` starts it: vllm-router's own launcher,
run after arranging, as every process of the stack does, to end with the launcher."""

from __future__ import annotations

from common.grpc_server import exit_with_launcher


def main() -> None:
    exit_with_launcher()
    from vllm_router.launch_router import main as launch  # installed with apex-serve[router]

    launch()


if __name__ == "__main__":
    main()
