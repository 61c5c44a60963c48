"""Command line: `python -m controller manager | agent | download | dev`.

Flags default from the environment the manifests set (POD_NAMESPACE, NODE_NAME, ...), so the
same image serves the manager Deployment, the agent DaemonSet and the download Jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import structlog

from controller import logs
from controller.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m controller")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    parser.add_argument(
        "--log-format", choices=("json", "console", "auto"), default="auto",
        help="json off a terminal by default",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)

    def process_flags(command: argparse.ArgumentParser, *, metrics: str, probes: str) -> None:
        command.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
        command.add_argument(
            "--namespace", default=os.environ.get("POD_NAMESPACE", "kserve"),
            help="namespace of the inferenceservice-config ConfigMap",
        )  # fmt: skip
        command.add_argument("--job-namespace", help="overrides localModel.jobNamespace")
        command.add_argument("--metrics-bind-address", default=metrics, help="'0' disables")
        command.add_argument("--health-probe-bind-address", default=probes, help="'0' disables")

    manager = commands.add_parser("manager", help="reconcile LocalModelCaches")
    process_flags(manager, metrics=":8080", probes=":8081")
    manager.add_argument("--workers", type=int, default=2)

    agent = commands.add_parser("agent", help="download models onto this node")
    process_flags(agent, metrics=":8080", probes=":8081")
    agent.add_argument("--node-name", default=os.environ.get("NODE_NAME"))
    agent.add_argument("--models-root", type=Path, default=Path("/mnt/models"))
    agent.add_argument("--download-image", help="image of download Jobs")

    download = commands.add_parser("download", help="fetch a model URI into a directory")
    download.add_argument("uri")
    download.add_argument("dest")

    dev = commands.add_parser("dev", help="run everything locally on a real control plane")
    dev.add_argument("--workdir", type=Path, default=Path(".dev"))
    dev.add_argument("--nodes", type=int, default=3)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(
        level=args.log_level, json=None if args.log_format == "auto" else args.log_format == "json"
    )
    try:
        return _run(args)
    except ConfigError as exc:
        # Exit (Kubernetes restarts us with backoff) with one line that says what to fix.
        structlog.get_logger(__name__).error("invalid configuration", error=str(exc))
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "download":
        from controller.download import main as download_main

        return download_main([args.uri, args.dest])
    if args.command == "manager":
        from controller.manager.run import ManagerOptions, run

        return asyncio.run(
            run(
                ManagerOptions(
                    kubeconfig=args.kubeconfig,
                    namespace=args.namespace,
                    metrics_address=args.metrics_bind_address,
                    probe_address=args.health_probe_bind_address,
                    workers=args.workers,
                    job_namespace=args.job_namespace,
                )
            )
        )
    if args.command == "agent":
        if not args.node_name:
            print("agent: --node-name or NODE_NAME is required", file=sys.stderr)
            return 2
        from controller.agent.run import AgentOptions
        from controller.agent.run import run as run_agent

        return asyncio.run(
            run_agent(
                AgentOptions(
                    kubeconfig=args.kubeconfig,
                    node_name=args.node_name,
                    models_root=args.models_root,
                    namespace=args.namespace,
                    metrics_address=args.metrics_bind_address,
                    probe_address=args.health_probe_bind_address,
                    job_namespace=args.job_namespace,
                    download_image=args.download_image,
                )
            )
        )
    from controller.testing.dev import run as run_dev

    try:
        return asyncio.run(run_dev(workdir=args.workdir, node_count=args.nodes))
    except KeyboardInterrupt:  # Ctrl-C before the cluster was up; everything is stopped by now
        return 130
