"""End-to-end studies: what lands in Optuna's storage and in MLflow, resume, failures and bad input."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import compose_search_config
from pipeline.errors import UserError
from pipeline.search import run_search

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_CNN_KERNELS = ("conv1", "conv2", "dense1", "output")
GOOD = {f"{layer}.kernel_initializer": "he_normal" for layer in SEED_CNN_KERNELS}
GOOD_TOO = {f"{layer}.kernel_initializer": "glorot_uniform" for layer in SEED_CNN_KERNELS}
# All-zero kernels give every image the same output, so validation accuracy stays at
# chance (0.1 on balanced data) and the default pruner stops the trial after one epoch.
DEAD = {f"{layer}.kernel_initializer": "zeros" for layer in SEED_CNN_KERNELS}


def run(overrides: list[str]) -> int:
    config, cfg = compose_search_config(overrides)
    return run_search(config, OmegaConf.to_container(cfg, resolve=True))


def write_space(folder, content: dict) -> str:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


def enqueue(study_name: str, storage: str, params: list[dict]) -> None:
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True)
    for values in params:
        study.enqueue_trial(values)


def mlflow_runs(workdir, study_name: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("pipeline.role") == "study"]
    trials = sorted((run for run in runs if "optuna.trial_number" in run.data.tags), key=lambda run: int(run.data.tags["optuna.trial_number"]))
    return client, parents, trials


def check_three_trial_study(workdir, data_overrides: list[str], epochs: int) -> None:
    storage = f"sqlite:///{workdir}/mlruns/optuna.db"
    space = write_space(workdir, {"default_choices": ["he_normal", "glorot_uniform", "zeros"]})
    overrides = [
        *data_overrides,
        f"space={space}",
        "study.name=e2e",
        "study.n_trials=3",
        "study.n_startup_trials=2",
        "study.n_warmup_steps=0",
        f"train.epochs={epochs}",
        "train.progress=false",
    ]
    os.makedirs(workdir / "mlruns", exist_ok=True)
    enqueue("e2e", storage, [GOOD, GOOD_TOO, DEAD])

    assert run(overrides) == 0

    study = optuna.load_study(study_name="e2e", storage=storage)
    trials = study.get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert trials[2].last_step == 0
    assert sorted(trials[0].params) == sorted(GOOD)
    assert sorted(trials[0].intermediate_values) == list(range(epochs))
    assert [trial.user_attrs["seed"] for trial in trials] == [0, 1, 2]

    client, parents, runs = mlflow_runs(workdir, "e2e")
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["optuna.study_name"] == "e2e"
    assert parents[0].data.metrics["trials_complete"] == 2
    assert parents[0].data.metrics["trials_pruned"] == 1
    artifacts = {item.path for item in client.list_artifacts(parents[0].info.run_id)}
    assert {"config.yaml", "best_config.yaml"} <= artifacts

    assert [run.info.run_name for run in runs] == ["trial-0", "trial-1", "trial-2"]
    assert [run.data.tags["optuna.state"] for run in runs] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED", "KILLED"]
    assert runs[2].data.tags["optuna.pruned_at_epoch"] == "0"
    for trial, record in zip(trials, runs):
        assert record.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert trial.user_attrs["mlflow_run_id"] == record.info.run_id
        assert record.data.params["conv1.kernel_initializer"] == trial.params["conv1.kernel_initializer"]
        assert record.data.params["train.epochs"] == str(epochs)
        assert record.data.tags["trial.seed"] == str(trial.user_attrs["seed"])

    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(runs[0].info.run_id, metric)
        assert [point.step for point in history] == list(range(epochs)), metric
    pruned_history = client.get_metric_history(runs[2].info.run_id, "val_accuracy")
    assert [point.step for point in pruned_history] == [0]
    assert runs[0].data.metrics["val_accuracy"] == pytest.approx(trials[0].value)


def test_search_colour_tree_three_trials(workdir, colour_tree):
    check_three_trial_study(workdir, [f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=8"], epochs=2)


def test_search_real_subset_three_trials(workdir, real_archive):
    data = [
        f"data.path={real_archive}",
        "data.train_subset=2000",
        "data.val_subset=500",
        "data.test_subset=100",
        "train.batch_size=64",
    ]
    check_three_trial_study(workdir, data, epochs=2)


def test_search_resume_keeps_total(workdir, colour_tree):
    base = [f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=16", "train.epochs=1", "train.progress=false", "study.name=resume"]

    assert run([*base, "study.n_trials=2"]) == 0
    assert run([*base, "study.n_trials=2"]) == 0
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{workdir}/mlruns/optuna.db")
    assert len(study.trials) == 2

    assert run([*base, "study.n_trials=3"]) == 0
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{workdir}/mlruns/optuna.db")
    assert len(study.trials) == 3
    _, parents, runs = mlflow_runs(workdir, "resume")
    assert len(parents) == 1
    assert [run.info.run_name for run in runs] == ["trial-0", "trial-1", "trial-2"]


def test_search_diverging_trial_fails_and_study_continues(workdir, colour_tree):
    # Plain SGD at a learning rate of a million overflows the weights within one epoch.
    space = write_space(workdir, {
        "default_choices": ["he_normal"],
        "hyperparameters": {"learning_rate": {"type": "categorical", "choices": [1.0e6, 0.01]}},
    })
    storage = f"sqlite:///{workdir}/mlruns/optuna.db"
    os.makedirs(workdir / "mlruns", exist_ok=True)
    enqueue("diverge", storage, [{**GOOD, "learning_rate": 1.0e6}, {**GOOD, "learning_rate": 0.01}])
    overrides = [f"data.path={colour_tree}", "data.validation_fraction=0.25", f"space={space}", "train=sgd",
                 "train.epochs=1", "train.batch_size=16", "train.progress=false", "study.name=diverge",
                 "study.n_trials=2", "study.pruner=none"]

    assert run(overrides) == 0

    trials = optuna.load_study(study_name="diverge", storage=storage).get_trials()
    assert [trial.state.name for trial in trials] == ["FAIL", "COMPLETE"]
    assert "non-finite loss" in trials[0].user_attrs["fail_reason"]
    _, _, runs = mlflow_runs(workdir, "diverge")
    assert [run.info.status for run in runs] == ["FAILED", "FINISHED"]
    assert runs[0].data.tags["optuna.state"] == "FAIL"
    assert "non-finite loss" in runs[0].data.tags["optuna.fail_reason"]


def test_search_saturating_initializer_pruned_at_init(workdir, colour_tree):
    # A normal initializer with stddev 10,000 saturates the softmax of every image.
    space = write_space(workdir, {
        "initializers": {"huge": {"name": "random_normal", "args": {"stddev": 1.0e4}}},
        "default_choices": ["huge", "he_normal"],
    })
    storage = f"sqlite:///{workdir}/mlruns/optuna.db"
    os.makedirs(workdir / "mlruns", exist_ok=True)
    huge = {f"{layer}.kernel_initializer": "huge" for layer in SEED_CNN_KERNELS}
    enqueue("saturate", storage, [huge, GOOD])
    overrides = [f"data.path={colour_tree}", "data.validation_fraction=0.25", f"space={space}",
                 "train.epochs=1", "train.batch_size=16", "train.progress=false", "study.name=saturate",
                 "study.n_trials=2", "study.pruner=none", "diagnostics.prune_verdicts=[exploding,dead]"]

    assert run(overrides) == 0

    trials = optuna.load_study(study_name="saturate", storage=storage).get_trials()
    assert [trial.state.name for trial in trials] == ["PRUNED", "COMPLETE"]
    assert trials[0].user_attrs["init_verdict"] == "exploding"
    assert list(trials[0].intermediate_values) == [0]
    assert trials[1].user_attrs["init_verdict"] == "ok"
    client, _, runs = mlflow_runs(workdir, "saturate")
    assert runs[0].info.status == "KILLED"
    assert runs[0].data.tags["optuna.pruned_at_epoch"] == "-1"
    assert "signal exploding at initialization" in runs[0].data.tags["optuna.prune_reason"]
    assert runs[0].data.metrics["init.std_ratio"] > 10
    assert "init_signal.json" in {item.path for item in client.list_artifacts(runs[0].info.run_id)}
    assert runs[1].data.tags["init.verdict"] == "ok"
    assert "init.conv1.activation_std" in runs[1].data.metrics


def write_bad_files(folder, colour_tree: str) -> dict[str, str]:
    """Write one broken file of each kind and return the placeholders that name them."""
    import pickle
    import shutil
    import tarfile

    (folder / "unknown.yaml").write_text("default_choices: [he_normal, kaiming_magic]\n")
    (folder / "layer.yaml").write_text("default_choices: [he_normal]\nlayers: {conv7: [he_normal]}\n")
    (folder / "empty.yaml").write_text("default_choices: []\n")
    (folder / "list.yaml").write_text("- he_normal\n- orthogonal\n")
    (folder / "args.yaml").write_text("initializers: {o: {name: orthogonal, args: {gain: high}}}\ndefault_choices: [o]\n")
    (folder / "corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 definitely not a complete archive")

    tree = folder / "tree_with_bad_image"
    shutil.copytree(colour_tree, tree)
    (tree / "train" / "cat" / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    archive = folder / "truncated.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(colour_tree, arcname="cifar")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    batches = folder / "cifar-10-batches-py"
    batches.mkdir()
    rows = np.zeros((10, 3072), dtype=np.uint8)
    for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        labels = [12] * 10 if name == "data_batch_3" else list(range(10))
        with open(batches / name, "wb") as stream:
            pickle.dump({b"data": rows, b"labels": labels}, stream)

    (folder / "blocker").write_text("a file where a folder is expected")
    (folder / "negative.yaml").write_text("default_choices: [he_normal]\nhyperparameters: {learning_rate: -0.5}\n")
    return {
        "SPACE_UNKNOWN_INITIALIZER": str(folder / "unknown.yaml"),
        "SPACE_UNKNOWN_LAYER": str(folder / "layer.yaml"),
        "SPACE_EMPTY": str(folder / "empty.yaml"),
        "SPACE_LIST": str(folder / "list.yaml"),
        "SPACE_BAD_ARGS": str(folder / "args.yaml"),
        "MISSING_DATA": str(folder / "MISSING_DATA"),
        "CORRUPT_ARCHIVE": str(folder / "corrupt.tar.gz"),
        "TRUNCATED_ARCHIVE": str(archive),
        "BAD_IMAGE_TREE": str(tree),
        "BAD_LABEL_BATCHES": str(batches),
        "UNWRITABLE_STORAGE": f"sqlite:///{folder / 'blocker' / 'optuna.db'}",
        "UNWRITABLE_ARTIFACTS": str(folder / "blocker" / "artifacts"),
        "SPACE_NEGATIVE_RATE": str(folder / "negative.yaml"),
    }


# Each bad input must end in one message naming the value, before any study or run exists.
BAD_INPUTS = [
    ("unknown initializer", ["space=SPACE_UNKNOWN_INITIALIZER"], "'kaiming_magic'"),
    ("unknown layer", ["space=SPACE_UNKNOWN_LAYER"], "layers ['conv7'] that the model lacks"),
    ("empty choice list", ["space=SPACE_EMPTY"], "must be a non-empty list"),
    ("space not a mapping", ["space=SPACE_LIST"], "must contain a mapping"),
    ("initializer argument of wrong type", ["space=SPACE_BAD_ARGS"], "Initializer 'o'"),
    ("space file missing", ["space=no_such_space"], "no_such_space.yaml not found"),
    ("continuous value on grid", ["space=with_learning_rate", "study.sampler=grid"], "study.sampler=grid cannot search"),
    ("missing data path", ["data.path=MISSING_DATA"], "MISSING_DATA"),
    ("corrupt archive", ["data.path=CORRUPT_ARCHIVE"], "corrupt.tar.gz"),
    ("truncated archive", ["data.path=TRUNCATED_ARCHIVE"], "truncated.tar.gz"),
    ("truncated image", ["data.path=BAD_IMAGE_TREE"], "0003.png"),
    ("label out of range", ["data.path=BAD_LABEL_BATCHES"], "data_batch_3"),
    ("wrong data format", ["data.format=batches"], "data.format"),
    ("subset larger than data", ["data.train_subset=100000"], "data.train_subset is 100000"),
    ("validation fraction zero", ["data.validation_fraction=0"], "data.validation_fraction must be between 0 and 1"),
    ("model input shape", ["model.input_shape=[28,28,3]"], "model.input_shape is [28, 28, 3] but the images"),
    ("dense without flatten", ["model.layers.4.type=dropout", "model.layers.4.rate=0.1"], "add a flatten or global_average_pool layer"),
    ("unknown layer type", ["model.layers.1.type=maxpool"], "model.layers[1] ('pool1').type must be one of"),
    ("unknown sampler", ["study.sampler=annealing"], "study.sampler must be one of tpe, random, grid but got 'annealing'"),
    ("unknown pruner", ["study.pruner=sometimes"], "study.pruner must be one of"),
    ("malformed storage URL", ["study.storage=sqlite//mlruns/optuna.db"], "is not a valid storage URL"),
    ("unknown database", ["study.storage=nosuchdb://localhost/optuna"], "'nosuchdb://localhost/optuna' is not a valid storage URL"),
    ("storage in unwritable folder", ["study.storage=UNWRITABLE_STORAGE"], "cannot be written"),
    ("artifacts in unwritable folder", ["tracking.artifact_location=UNWRITABLE_ARTIFACTS"], "tracking.artifact_location points to"),
    ("journal without file", ["study.storage=journal:"], "needs a file path"),
    ("storage under /proc", ["study.storage=sqlite:////proc/nope/optuna.db"], "cannot be written"),
    ("negative fixed learning rate", ["space=SPACE_NEGATIVE_RATE"], "'learning_rate' in"),
    ("plain folder as tracking store", ["tracking.uri=./mlruns"], "tracking.uri './mlruns' is not supported"),
    ("unreachable tracking server", ["tracking.uri=http://127.0.0.1:9"], "could not be opened"),
    ("negative epochs", ["train.epochs=-2"], "train.epochs must be a positive number but got -2"),
    ("zero batch size", ["train.batch_size=0"], "train.batch_size must be a positive number but got 0"),
    ("zero trials", ["study.n_trials=0"], "study.n_trials must be a positive number but got 0"),
    ("unknown prune verdict", ["diagnostics.prune_verdicts=[sleepy]"], "diagnostics.prune_verdicts must be one of"),
    ("grace period too short", ["study.grace_period=5"], "study.grace_period must be longer"),
    ("study name with quote", ["study.name=\"it's\""], "study.name must not contain quotes"),
]


@pytest.mark.parametrize(("case", "overrides", "expected"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_search_bad_input_creates_nothing(workdir, colour_tree, case, overrides, expected):
    files = write_bad_files(workdir, colour_tree)
    resolved = []
    for override in overrides:
        key, value = override.split("=", 1)
        resolved.append(f"{key}={files.get(value, value)}")
    base = [f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.progress=false", "study.name=bad"]

    with pytest.raises(UserError) as caught:
        run([*base, *resolved])

    assert expected in str(caught.value)
    assert not os.path.exists(workdir / "mlruns" / "optuna.db")
    assert not os.path.exists(workdir / "mlruns" / "mlflow.db")


@pytest.mark.parametrize(("override", "expected"), [("train.epochs=three", "train.epochs"), ("model=resnet", "model"), ("study.n_trials=[1]", "study.n_trials")])
def test_search_wrong_type_rejected_by_hydra(workdir, override, expected):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with pytest.raises((HydraException, OmegaConfBaseException)) as caught:
        compose_search_config([override])

    assert expected in str(caught.value)
    assert not os.path.exists(workdir / "mlruns")


def test_search_command_reports_user_error(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("default_choices: [he_normal, kaiming_magic]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.search", f"space={space}", "study.name=cli"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )

    assert result.returncode == 2
    assert "error: Initializer 'kaiming_magic'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlruns" / "optuna.db").exists()


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ("jax", "the JAX backend needs jax; pip install -e '.[test]' brings it"),
        ("torch", "the PyTorch backend needs torch, which the test extra leaves out because of its size"),
    ],
)
def test_search_runs_on_other_backend(tmp_path, colour_tree, backend, reason):
    pytest.importorskip(backend, reason=reason)

    # steps_per_execution=8 also checks the fallback to 1 on PyTorch.
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.search", f"data.path={colour_tree}", "data.validation_fraction=0.25",
         "train.batch_size=8", "train.epochs=2", "train.steps_per_execution=8", "study.n_trials=2",
         f"study.name={backend}", "study.pruner=none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": REPOSITORY, "KERAS_BACKEND": backend},
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Keras backend {backend}" in result.stdout + result.stderr
    assert ("training with 1" in result.stdout + result.stderr) is (backend == "torch")
    study = optuna.load_study(study_name=backend, storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [0, 1]
    _, parents, runs = mlflow_runs(tmp_path, backend)
    assert len(parents) == 1
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    for run in runs:
        assert np.isfinite(run.data.metrics["init.gradient_ratio"])


@pytest.mark.parametrize(("epochs", "warned"), [(2, True), (3, False)])
def test_search_warns_when_no_epoch_prunable(workdir, colour_tree, caplog, epochs, warned):
    overrides = [f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=16",
                 f"train.epochs={epochs}", "train.progress=false", "study.name=warmup", "study.n_trials=1", "study.n_warmup_steps=1",
                 "diagnostics.enabled=false"]

    with caplog.at_level("WARNING", logger="pipeline.search"):
        assert run(overrides) == 0

    assert ("leaves no epoch at which a trial can be pruned" in caplog.text) is warned


def test_search_same_seed_same_results(tmp_path, monkeypatch, colour_tree):
    results = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        assert run([f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=16", "train.epochs=2",
                    "train.progress=false", "train.deterministic=true", "study.name=repeat", "study.n_trials=3",
                    "study.pruner=none"]) == 0
        trials = optuna.load_study(study_name="repeat", storage=f"sqlite:///{folder}/mlruns/optuna.db").trials
        results.append([(trial.params, trial.value, trial.intermediate_values) for trial in trials])

    assert [params for params, _, _ in results[0]] == [params for params, _, _ in results[1]]
    assert [value for _, value, _ in results[0]] == [value for _, value, _ in results[1]]
    assert [curve for _, _, curve in results[0]] == [curve for _, _, curve in results[1]]


def test_search_memory_flat_over_trials(workdir, colour_tree):
    # 12 trials in one process; the resident memory after each trial is in the user
    # attribute rss_mb. After the first trials warm up the caches, growth must stay small.
    assert run([f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=16", "train.epochs=1",
                "train.progress=false", "study.name=memory", "study.n_trials=12", "study.pruner=none",
                "diagnostics.enabled=false"]) == 0
    rss = [trial.user_attrs["rss_mb"] for trial in optuna.load_study(study_name="memory", storage=f"sqlite:///{workdir}/mlruns/optuna.db").trials]

    growth_per_trial = (rss[-1] - rss[3]) / (len(rss) - 4)
    assert growth_per_trial < 5.0, rss


def test_search_multirun_one_study_per_model(tmp_path, colour_tree):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.search", "--multirun", "model=seed_cnn,plain_deep",
         f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=16", "train.epochs=1",
         "train.progress=false", "study.n_trials=1", "diagnostics.enabled=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )

    assert result.returncode == 0, result.stderr[-3000:]
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    names = sorted(summary.study_name for summary in optuna.get_all_study_summaries(storage))
    assert names == ["initializers-plain_deep", "initializers-seed_cnn"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for name in names:
        experiment = client.get_experiment_by_name(name)
        parents = client.search_runs([experiment.experiment_id], filter_string="tags.`pipeline.role` = 'study'")
        assert len(parents) == 1
        config = client.download_artifacts(parents[0].info.run_id, "config.yaml", str(tmp_path / name))
        assert yaml.safe_load(open(config))["model"]["name"] == name.split("-", 1)[1]
    assert (tmp_path / "mlruns" / "hydra").is_dir()


class _SignalOnRecord(logging.Handler):
    """Sends SIGINT to this process when a log message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            os.kill(os.getpid(), signal.SIGINT)


def test_search_signal_during_setup_ends_before_trials(workdir, colour_tree, caplog):
    hook = _SignalOnRecord("worker ")
    logger = logging.getLogger("pipeline.search")
    logger.addHandler(hook)
    try:
        with caplog.at_level("INFO", logger="pipeline.search"):
            exit_code = run([f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=16",
                             "train.epochs=1", "study.name=setup-stop", "study.n_trials=2"])
    finally:
        logger.removeHandler(hook)

    assert exit_code == 130
    assert optuna.load_study(study_name="setup-stop", storage=f"sqlite:///{workdir}/mlruns/optuna.db").trials == []
    _, parents, trials = mlflow_runs(workdir, "setup-stop")
    assert [parent.info.status for parent in parents] == ["KILLED"]
    assert trials == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
