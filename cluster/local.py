"""A multi-node Ray cluster on one machine, for scaling and fault tests.

    python -m cluster.local start --workers 2 --gpus-per-worker 2     # head + 2 worker nodes
    python -m cluster.local status
    python -m cluster.local stop

Each node is a real ``ray start`` process group with its own resources. Worker nodes can
advertise fake ``GPU`` resources (plus a ``fake_accel`` marker and the label ``pool=gpu``) so
that GPU scheduling is exercised without GPUs; ``torch.cuda.is_available()`` stays False there
and the actors fall back to the CPU. The head runs the dashboard and the job server on
127.0.0.1, so ``ray job submit --address http://127.0.0.1:<dashboard_port>`` works against it.
Token auth is disabled for this throwaway cluster (``RAY_AUTH_MODE=disabled``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True)
STATE = Path(tempfile.gettempdir()) / "spote-local-cluster.json"


@dataclass
class LocalCluster:
    gcs_port: int = 6390
    dashboard_port: int = 8275
    head_cpus: int = 2
    workers: int = 2
    cpus_per_worker: int = 2
    gpus_per_worker: int = 0
    temp_dir: str = str(Path(tempfile.gettempdir()) / "spote-ray")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict:
        return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    def _ray(self, *args: str) -> None:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        subprocess.run([ray_bin, *args], check=True, env=self.env(), stdout=subprocess.DEVNULL)

    def start(self) -> "LocalCluster":
        self._ray("start", "--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1",
                  f"--num-cpus={self.head_cpus}", "--num-gpus=0", "--include-dashboard=true",
                  "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                  f"--temp-dir={self.temp_dir}", "--disable-usage-stats")
        for _ in range(self.workers):
            args = ["start", f"--address={self.address}", "--node-ip-address=127.0.0.1",
                    f"--num-cpus={self.cpus_per_worker}", f"--num-gpus={self.gpus_per_worker}"]
            if self.gpus_per_worker:
                args += [f"--resources={json.dumps({'fake_accel': self.gpus_per_worker})}", "--labels=pool=gpu"]
            self._ray(*args)
        self.wait_for_nodes(1 + self.workers)
        STATE.write_text(json.dumps(self.__dict__))
        return self

    def wait_for_nodes(self, n: int, timeout: float = 90) -> None:
        import ray

        deadline = time.time() + timeout
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=self.address, log_to_driver=False)
        try:
            while time.time() < deadline:
                if len([x for x in ray.nodes() if x["Alive"]]) >= n:
                    return
                time.sleep(1)
            raise TimeoutError(f"only {len(ray.nodes())} of {n} nodes came up")
        finally:
            ray.shutdown()

    def wait_for_job_server(self, timeout: float = 60) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"job server at {self.dashboard} did not come up")

    def stop(self) -> None:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        subprocess.run([ray_bin, "stop", "--force"], env=self.env(), stdout=subprocess.DEVNULL, check=False)
        STATE.unlink(missing_ok=True)


@app.command()
def start(workers: int = 2, cpus_per_worker: int = 2, gpus_per_worker: int = 0, head_cpus: int = 2,
          gcs_port: int = 6390, dashboard_port: int = 8275):
    """Start a head and WORKERS worker nodes on this machine."""
    c = LocalCluster(gcs_port, dashboard_port, head_cpus, workers, cpus_per_worker, gpus_per_worker).start()
    c.wait_for_job_server()
    typer.echo(f"cluster up: RAY_ADDRESS={c.address}  job server: {c.dashboard}")


@app.command()
def status():
    """Show the nodes and resources of the running local cluster."""
    if not STATE.exists():
        typer.echo("no local cluster")
        raise typer.Exit(1)
    c = LocalCluster(**json.loads(STATE.read_text()))
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address=c.address, log_to_driver=False)
    for node in ray.nodes():
        typer.echo(f"{node['NodeID'][:8]} alive={node['Alive']} {node['Resources']}")
    ray.shutdown()


@app.command()
def stop():
    """Stop every Ray process of the local cluster."""
    LocalCluster().stop()
    typer.echo("stopped")


if __name__ == "__main__":
    app()
