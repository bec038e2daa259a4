"""How long a person waits for the app: --help, a config mistake, `make ui`, `make run`.

    make bench-cli        # or: python benchmarks/cli_speed.py [--repeats 3] [--run-args ...]

Wall-clock seconds from starting the command to: the end of `python -m pipeline --help`;
the one-line error and exit 2 of a bad value (train.epochs=-1); `make ui`'s link (printed
once the server answers: serve/ui.py), on a new store and again on the same store; and
`make run` (ours and the baseline, as the Makefile runs it, into a store of its own), with
each stage's share as the app logs it ("stage <name> done in <s> s"). The first three are
the minimum of --repeats (noise only adds time); `make run` runs once. Measured here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def seconds(command: list[str], expect: int = 0, env: dict | None = None) -> tuple[float, str]:
    """Wall time of command run to its end, and its output (the app logs to stdout); it
    must exit `expect`."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, env=env)
    took = time.perf_counter() - started
    if done.returncode != expect:
        sys.exit(
            f"{' '.join(command)} exited {done.returncode}, not {expect}:\n{done.stderr[-2000:]}"
        )
    return took, done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui_ready(mlruns: Path, limit: float = 300) -> float:
    """Seconds from starting `make ui`'s server until it prints its link."""
    command = [
        PYTHON,
        "-m",
        "pipeline.serve.ui",
        "--port",
        str(free_port()),
        "--mlruns",
        str(mlruns),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    started = time.perf_counter()
    server = subprocess.Popen(
        command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        for line in server.stdout:
            if line.startswith("MLflow UI:"):
                return time.perf_counter() - started
            if time.perf_counter() - started > limit:
                break
        sys.exit(f"make ui printed no link in {limit} s")
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-args", nargs="*", default=[], help="overrides for make run")
    args = parser.parse_args()
    app = [PYTHON, "-m", "pipeline"]
    print(
        f"wall seconds, min of {args.repeats} (make run: once); {os.cpu_count()} cores", flush=True
    )
    help_s = min(seconds([*app, "--help"])[0] for _ in range(args.repeats))
    print(f"  python -m pipeline --help                 {help_s:6.2f} s", flush=True)
    error_s = min(seconds([*app, "train.epochs=-1"], expect=2)[0] for _ in range(args.repeats))
    print(f"  a bad value (train.epochs=-1), exit 2     {error_s:6.2f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = []
        for i in range(args.repeats):
            fresh.append(ui_ready(Path(tmp) / f"new{i}"))
        print(f"  make ui: link printed, new store          {min(fresh):6.2f} s", flush=True)
        again = min(ui_ready(Path(tmp) / "new0") for _ in range(args.repeats))
        print(f"  make ui: link printed, existing store     {again:6.2f} s", flush=True)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        run = [*app, f"paths.mlruns_dir={tmp}/run", "quiet=true", *args.run_args]
        took, log = seconds(run, env=env)
        stages = re.findall(r"stage (\w+) done in ([\d.]+) s", log)
        split = ", ".join(f"{name} {float(s):.1f}" for name, s in stages)
        rest = took - sum(float(s) for _, s in stages)
        print(
            f"  make run {' '.join(args.run_args)}".ljust(44) + f"{took:6.2f} s = {split}, "
            f"start-up and summary {rest:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
