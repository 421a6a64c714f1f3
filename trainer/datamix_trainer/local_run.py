"""`datamix run`: the cluster's run on this machine.

The manifest becomes a run spec exactly as the operator makes it (`build_run_spec`), with baseDir
mapped to `--data-dir` and the output path to `--output-dir`; then `datamix launch` (torchrun)
starts `--nproc` trainer processes, as in a pod. This process draws a progress bar from the trainer's own metrics
endpoint (so the endpoint is exercised by every local run) and, at the end, prints the per-dataset
report and writes the loss curve.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from datamix.errors import UserError
from datamix.runspec import RunSpec
from datamix_trainer import demo_data
from datamix_trainer.config import Plan, RunPaths
from datamix_trainer.indexed import check_run_data

QUICKSTART = Path("examples") / "quickstart.yaml"


def find_quickstart() -> Path:
    """examples/quickstart.yaml of the current directory, else of the checkout this package is in."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / QUICKSTART).is_file():
            return base / QUICKSTART
    raise UserError(f"manifest: no manifest given and {QUICKSTART} not found; pass a manifest path")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_nproc(spec_for: Callable[[int], RunSpec]) -> int:
    """Local GPUs; on CPU two single-threaded processes where the cores and the batch allow.

    Two data-parallel processes of one thread each beat one process of two threads on two cores,
    and by far on a busy machine, where OpenMP threads that wait for each other stall.
    """
    if shutil.which("nvidia-smi") is not None:
        import torch  # only where GPUs may exist

        if torch.cuda.device_count() > 0:
            return torch.cuda.device_count()
    nproc = min(2, os.cpu_count() or 1)
    while nproc > 1:
        try:
            Plan.make(spec_for(nproc), nproc)
            return nproc
        except UserError:
            nproc -= 1
    return 1


def scrape(port: int) -> dict[str, float]:
    """Unlabelled-by-dataset samples of the endpoint, by name (`None` while it is not up)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "dataset" not in sample.labels:
                values[sample.name] = sample.value
    return values


class Progress:
    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last_decile = -1
        self.first: tuple[float, float] | None = None  # (time, samples) of the first progress seen

    def show(self, values: dict[str, float]) -> None:
        done, total = values.get("datamix_consumed_samples", 0.0), values.get("datamix_target_samples", 0.0)
        if not total:
            return
        fraction = min(done / total, 1.0)
        # ETA from the training rate seen so far (start-up and index building excluded).
        if self.first is None and done > 0:
            self.first = (time.time(), done)
        eta = 0.0
        if self.first is not None and done > self.first[1]:
            eta = (time.time() - self.first[0]) * (total - done) / (done - self.first[1])
        loss = values.get("datamix_train_loss")
        rate = values.get("datamix_tokens_per_second", 0.0)
        text = (
            f"{100 * fraction:5.1f}% | samples {int(done)}/{int(total)} | loss {loss:.3f} | "
            f"{rate / 1000:.1f}k tokens/s | ETA {int(eta) // 60}:{int(eta) % 60:02d}"
            if loss is not None
            else f"{100 * fraction:5.1f}% | starting"
        )
        if self.tty:
            width = 28
            filled = int(width * fraction)
            sys.stdout.write("\r[" + "#" * filled + "." * (width - filled) + "] " + text + "   ")
            sys.stdout.flush()
        elif int(10 * fraction) > self.last_decile:
            self.last_decile = int(10 * fraction)
            print(text, flush=True)

    def end(self) -> None:
        if self.tty:
            sys.stdout.write("\n")


def run_local(
    manifest: str | None,
    data_dir: str | None,
    output_dir: str,
    nproc: int | None,
    metrics_port: int = 0,
) -> int:
    from datamix.experiment import build_run_spec, load_manifest

    manifest_path = Path(manifest) if manifest else find_quickstart()
    doc = load_manifest(manifest_path)
    if data_dir is None and manifest is None:
        directory = demo_data.default_dir()
        if not demo_data.is_built(directory):
            print(f"building the demo datasets in {directory} (once)", flush=True)
            demo_data.build(directory)
        data_dir = str(directory)

    def spec_for(procs: int) -> RunSpec:
        return build_run_spec(
            doc,
            base_dir=str(Path(data_dir).resolve()) if data_dir else None,
            output_dir=str(Path(output_dir).resolve()),
            procs_per_node=procs,
            nodes=1,
        )

    if nproc is not None and nproc < 1:
        raise UserError("--nproc: must be at least 1")
    nproc = nproc or default_nproc(spec_for)
    spec = spec_for(nproc)
    check_run_data(spec)
    plan = Plan.make(spec, nproc)
    paths = RunPaths(Path(spec.output_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.run_spec.write_text(spec.to_json() + "\n")
    port = metrics_port or free_port()

    env = dict(os.environ)
    env.update({"DATAMIX_METRICS_PORT": str(port), "DATAMIX_CONSOLE": "0"})
    # One thread per process: on a shared or busy machine, OpenMP threads that wait for each
    # other cost far more than they bring to a model this small.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = local_train_command(paths.run_spec, nproc)
    launcher_log = paths.logs / "launcher.log"
    launcher_log.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"run {spec.experiment}/{spec.run}: {len(spec.datasets)} datasets, {plan.train_steps} steps, "
        f"{nproc} process(es)\n  manifest {manifest_path}\n  data     {data_dir or 'as in the manifest'}\n"
        f"  output   {paths.root}\n  metrics  http://127.0.0.1:{port}/metrics\n  logs     {paths.logs}",
        flush=True,
    )
    progress = Progress()
    with open(launcher_log, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while process.poll() is None:
                with contextlib.suppress(OSError):  # not up yet (or already gone)
                    progress.show(scrape(port))
                time.sleep(0.5)
        except KeyboardInterrupt:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            progress.end()
            print(f"interrupted; the run resumes from its last checkpoint when started again ({paths.checkpoints})")
            return 130
    progress.end()
    if process.returncode != 0:
        tail = launcher_log.read_text(errors="replace").splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
        errors = [line for line in tail if line.startswith("error: ")]
        print(f"training failed (exit {process.returncode}); full log: {launcher_log}", file=sys.stderr)
        if errors:
            raise UserError(errors[-1][len("error: ") :])
        return 1
    return report(paths)


def report(paths: RunPaths) -> int:
    from datamix_trainer.report import load_history, load_result, loss_curve, table

    spec = RunSpec.from_json(paths.run_spec.read_text())
    result = load_result(paths.results)
    png = loss_curve(spec, load_history(paths.history), paths.root / "loss_curve.png")
    print()
    print(table(spec, result))
    print()
    loss = "n/a" if result.train_loss is None else f"{result.train_loss:.4f}"
    print(f"train loss {loss} after {result.steps} steps in {result.wall_seconds:.0f}s")
    print(f"loss curve: {png}")
    print(f"results:    {paths.results}")
    return 0


def local_train_command(run_spec: Path, nproc: int) -> list[str]:
    """`datamix train` on this machine: bare for one process, under `datamix launch` (torchrun with
    honest exit codes, as in a pod) for several."""
    train = ["-m", "datamix_cli", "train", "--run-spec", str(run_spec)]
    if nproc == 1:
        return [sys.executable, *train]
    launch = [sys.executable, "-m", "datamix_cli", "launch"]
    return [*launch, "--standalone", f"--nproc-per-node={nproc}", *train]
