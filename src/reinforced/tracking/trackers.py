"""Experiment trackers chosen by name in ``training.report_to``: TensorBoard, Weights & Biases, MLflow.

``metrics.jsonl`` is always written (sinks.MetricsWriter); each tracker named in ``report_to`` gets the same
rows and, once per tracker run, the resolved config (TensorBoard: a text entry; W&B: the run config; MLflow:
params with dotted keys plus a ``config.yaml`` artifact). Each tracker is the library's own client: we only
map a metrics row onto it, so nothing here reimplements a tracker.

Defaults that never stop a run or prompt for a login:

- W&B: ``WANDB_MODE`` wins; otherwise ``online`` when an API key is found (``WANDB_API_KEY`` or a
  ``wandb login`` entry in ~/.netrc), else ``offline`` (files under ``RUN_DIR/wandb``; upload later with
  ``wandb sync RUN_DIR/wandb/offline-run-*``). Project: ``WANDB_PROJECT`` or ``reinforced``.
- MLflow: ``MLFLOW_TRACKING_URI`` wins; otherwise a local file store in ``RUN_DIR/mlruns`` (MLflow 3.18 keeps
  file stores in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which is set for this default only).
  Experiment: ``MLFLOW_EXPERIMENT_NAME`` or ``reinforced``.

Resume: the W&B and MLflow run ids are kept in ``RUN_DIR/trackers.json``; ``--resume`` continues the same
tracker run (W&B ``resume="allow"``, MLflow the same run id). A fresh history starts new tracker runs.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from reinforced.registry import Registry

IDS_FILE = "trackers.json"


@dataclass(frozen=True)
class TrackerContext:
    """What a tracker is built from. ``resume``: continue the tracker run recorded in ``trackers.json``."""

    run_dir: Path
    run_name: str = "run"
    config: Mapping[str, Any] = field(default_factory=dict)  # the resolved config tree
    config_yaml: str = ""
    resume: bool = False
    purge_after: int | None = None  # TensorBoard: drop events logged after this step (a resumed history)


class Tracker(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


TRACKERS: Registry[Callable[[TrackerContext], Tracker]] = Registry("tracker")


def finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """The finite values as floats: a NaN (a failed reward's mean, a KL not computed) is left out.

    >>> finite({"a": 1, "b": float("nan")})
    {'a': 1.0}
    """
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def stored_id(run_dir: Path, tracker: str) -> str | None:
    path = run_dir / IDS_FILE
    return json.loads(path.read_text()).get(tracker) if path.exists() else None


def store_id(run_dir: Path, tracker: str, run_id: str) -> None:
    path = run_dir / IDS_FILE
    ids = json.loads(path.read_text()) if path.exists() else {}
    ids[tracker] = run_id
    path.write_text(json.dumps(ids, indent=1) + "\n")


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"training.report_to lists {extra!r}, which needs the {extra!r} extra: "
                          f"pip install 'reinforced[{extra}]'") from None


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """Scalars to ``RUN_DIR/tensorboard``; a resumed history purges the events logged after its step."""

    def __init__(self, ctx: TrackerContext) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy import only when used

        purge = None if ctx.purge_after is None else ctx.purge_after + 1
        self._tb = SummaryWriter(log_dir=str(ctx.run_dir / "tensorboard"), purge_step=purge)
        if ctx.config_yaml and not ctx.resume:
            # TensorBoard renders text as Markdown: four spaces keep the YAML a code block
            self._tb.add_text("config", "".join(f"    {line}\n" for line in ctx.config_yaml.splitlines()), 0)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in finite(metrics).items():
            self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._tb.close()


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; else ``online`` when an API key is found, ``offline`` otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return "online" if netrc.netrc().authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


@TRACKERS.register("wandb")
class WandbTracker:
    """A W&B run in ``RUN_DIR/wandb``, offline unless a key is found (module docstring)."""

    def __init__(self, ctx: TrackerContext) -> None:
        wandb = _require("wandb", "wandb")
        run_id = stored_id(ctx.run_dir, "wandb") if ctx.resume else None
        # console="off": our own progress lines stay on stdout untouched (W&B would wrap the stream)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "reinforced", name=ctx.run_name,
                              dir=str(ctx.run_dir), id=run_id, resume="allow" if run_id else None,
                              mode=wandb_mode(), config=dict(ctx.config), reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))
        store_id(ctx.run_dir, "wandb", self.run.id)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(finite(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def mlflow_key(name: str) -> str:
    """A metric or param name MLflow accepts (alphanumerics, ``_-. /:``) and can store in any backend.

    A local file store keeps a metric in a file named by its path, so ``sampler/drawn`` and
    ``sampler/drawn/arithmetic`` cannot both exist: the first ``/`` (the section MLflow's UI groups by) is
    kept and the deeper ones become ``.``.

    >>> mlflow_key("eval/math500/pass@8")
    'eval/math500.pass_at_8'
    """
    section, sep, rest = re.sub(r"[^\w\-. /:]", "_", name.replace("@", "_at_")).partition("/")
    return section + sep + rest.replace("/", ".")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys of a nested config, leaves as strings.

    >>> flatten({"training": {"lr": 0.01, "report_to": ["mlflow"]}})
    {'training.lr': '0.01', 'training.report_to': "['mlflow']"}
    """
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


@TRACKERS.register("mlflow")
class MlflowTracker:
    """An MLflow run through ``MlflowClient`` (no global active run), in ``RUN_DIR/mlruns`` by default."""

    def __init__(self, ctx: TrackerContext) -> None:
        _require("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (ctx.run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = stored_id(ctx.run_dir, "mlflow") if ctx.resume else None
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "reinforced"
        experiment = self.client.get_experiment_by_name(name)
        eid = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(eid, run_name=ctx.run_name).info.run_id
        store_id(ctx.run_dir, "mlflow", self.run_id)
        # MLflow caps a param value at 6000 characters and a batch at 100 params
        params = [Param(mlflow_key(k), v[:6000]) for k, v in flatten(ctx.config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        if ctx.config_yaml:
            self.client.log_text(self.run_id, ctx.config_yaml, "config.yaml")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(mlflow_key(k), v, now, step) for k, v in finite(metrics).items()]
        for i in range(0, len(rows), 1000):
            self.client.log_batch(self.run_id, metrics=rows[i:i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
