"""Trackers through fit() on tiny-qwen2: W&B offline and MLflow's local store get every metrics row and the
resolved config, read back through the trackers' own files and client; --resume continues the same tracker
run; TensorBoard gets the config; the old training.tensorboard flag and report_to clash as errors."""

import glob
import json
import struct

import pytest

from reinforced.config import ConfigError, load_config
from reinforced.tracking.sinks import read_metrics
from reinforced.tracking.trackers import wandb_mode
from reinforced.training.loop import fit

BASE = [
    "data.train=[{task: arithmetic}]", "data.template=plain", "model.name_or_path=tiny-qwen2",
    "rollout.group_size=4", "rollout.max_new_tokens=8", "training.num_prompts=2", "training.micro_batch_size=8",
    "training.lr=0.01", "training.checkpoint_every=1", "run.num_threads=1",
    "rewards.sets={arithmetic: [{name: math_answer, accuracy: true}, {name: kimi_length}]}",
]


def run(tmp_path, tracker, steps, resume=False):
    cfg = load_config(None, [*BASE, f"run.output_dir={tmp_path}", "run.name=r", f"training.max_steps={steps}",
                             f"training.report_to=[{tracker}]"])
    return fit(cfg, resume=resume, show_progress=False).run_dir


def reward_by_step(run_dir):
    return {r["step"]: r["reward/mean"] for r in read_metrics(run_dir) if r.get("reward/mean") is not None}


def wandb_records(path):
    """The protobuf records of a W&B transaction log (``run-ID.wandb``): a 7-byte ``:W&B`` header, then
    LevelDB log blocks of 32 KiB whose records are [crc32 (4) | length (2, LE) | type (1)] + payload, where
    type 1 is a whole record and 2/3/4 the first/middle/last pieces of a long one."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):  # block trailer or zero padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_gets_every_row_and_the_config_and_resume_continues_the_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    run_dir = run(tmp_path, "wandb", 2)
    first_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]
    run_dir = run(tmp_path, "wandb", 3, resume=True)
    assert json.loads((run_dir / "trackers.json").read_text())["wandb"] == first_id  # the same W&B run
    logs = sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / f"run-{first_id}.wandb")))
    assert len(logs) == 2  # the first process and the resumed one, both under the one run id
    logged, configs = {}, []
    for path in logs:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                if "reward/mean" in items:
                    logged[items["_step"]] = items["reward/mean"]
            elif kind == "run":
                assert record.run.run_id == first_id and record.run.project == "reinforced"
                configs.append({i.key: json.loads(i.value_json) for i in record.run.config.update})
    assert logged == pytest.approx(reward_by_step(run_dir)) and sorted(logged) == [1, 2, 3]
    assert configs[0]["training"]["report_to"] == ["wandb"] and configs[0]["model"]["name_or_path"] == "tiny-qwen2"


def test_mlflow_local_store_gets_metrics_params_and_config_and_resume_continues_the_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # recorded, so the tracker's default is undone after
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    run_dir = run(tmp_path, "mlflow", 2)
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    run(tmp_path, "mlflow", 3, resume=True)
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"] == run_id
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "r"
    history = {m.step: m.value for m in client.get_metric_history(run_id, "reward/mean")}
    assert history == pytest.approx(reward_by_step(run_dir)) and sorted(history) == [1, 2, 3]
    assert got.data.params["training.lr"] == "0.01" and got.data.params["training.report_to"] == "['mlflow']"
    # a name that is also another's prefix (sampler/drawn, sampler/drawn/arithmetic) is stored, not rejected
    last = [r for r in read_metrics(run_dir) if "sampler/drawn" in r][-1]  # step 3, the latest value
    assert got.data.metrics["sampler/drawn.arithmetic"] == last["sampler/drawn/arithmetic"]
    assert got.data.metrics["sampler/drawn"] == last["sampler/drawn"]
    local = client.download_artifacts(run_id, "config.yaml", str(tmp_path))
    assert load_config(local).training.report_to == ("mlflow",)  # the logged config loads back as it ran


def test_tensorboard_gets_the_resolved_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = run(tmp_path, "tensorboard", 1)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "report_to:" in text and "tiny-qwen2" in text
    assert [e.step for e in events.Scalars("reward/mean")] == [1]


def test_old_tensorboard_flag_is_an_alias_and_a_clash_is_an_error():
    assert load_config(None, ["training.tensorboard=false"]).training.report_to == ()
    assert load_config(None, ["training.tensorboard=true"]).training.report_to == ("tensorboard",)
    both = load_config(None, ["training.tensorboard=false", "training.report_to=[mlflow]"])
    assert both.training.report_to == ("mlflow",)
    with pytest.raises(ConfigError, match="training.tensorboard=false clashes with training.report_to"):
        load_config(None, ["training.tensorboard=false", "training.report_to=[tensorboard, wandb]"])
    with pytest.raises(ConfigError, match="lists a tracker twice"):
        load_config(None, ["training.report_to=[mlflow, mlflow]"])
    with pytest.raises(ConfigError, match="'tensorboard', 'wandb' or 'mlflow'"):
        load_config(None, ["training.report_to=[neptune]"])


def test_wandb_mode_is_offline_without_a_key(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"  # a `wandb login` entry
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"  # the user's WANDB_MODE always wins
