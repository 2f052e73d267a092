"""The fedrec command line: a run directory on success, one clear line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import main

TINY_SYNTHETIC = [
    "--set", "data.synthetic.n_users=60", "--set", "data.synthetic.n_items=80",
    "--set", "model.options.gmf_dim=8", "--set", "model.options.mlp_layers=[16, 8]",
]


def test_train_writes_a_complete_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--epochs", "2", "--output-dir", str(tmp_path), *TINY_SYNTHETIC])
    assert code == 0
    (run_directory,) = tmp_path.iterdir()
    names = {path.name for path in run_directory.iterdir()}
    assert {"config.json", "metrics.json", "history.jsonl", "environment.json", "model.pt"} <= names
    metrics = json.loads((run_directory / "metrics.json").read_text())
    assert {"full/ndcg@10", "sampled/hr@10", "full/coverage@10"} <= set(metrics["test"])
    assert metrics["timings_seconds"]["train"] > 0
    config = json.loads((run_directory / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["data"]["synthetic"]["n_users"] == 60
    versions = json.loads((run_directory / "environment.json").read_text())["packages"]
    assert versions["torch"] != "not installed"
    # The table puts Popularity and the ratio beside the model, and says the run is not private.
    out = capsys.readouterr().out
    ratio = metrics["test"]["full/ndcg@10"] / metrics["popularity_test"]["full/ndcg@10"]
    assert "x Popularity" in out and f"{ratio:.2f}" in out and "NOT PRIVATE" in out and "ndcg@10" in out
    assert len((run_directory / "history.jsonl").read_text().splitlines()) == 2


def write_ml100k(folder: Path, ratings: bytes) -> Path:
    dataset = folder / "movielens-100k"
    dataset.mkdir(parents=True)
    (dataset / "u.data").write_bytes(ratings)
    genres = "|".join(["0"] * 18 + ["1"])
    items = "".join(f"{item}|Movie {item} (1995)|01-Jan-1995||http://x|{genres}\n" for item in range(1, 4))
    (dataset / "u.item").write_bytes(items.encode("latin-1"))
    return dataset / "u.data"


@pytest.mark.parametrize(
    ("ratings", "line", "words"),
    [
        (b"1\t1\t5\t100\n1\t2\t3\n", 2, "fields"),  # a malformed line
        (b"1,1,5,100\n", 1, "delimiter"),  # wrong delimiter
        (b"", 1, "empty"),  # empty file
        (b"1\t1\t5\t100\nabc\t2\t3\t200\n", 2, "abc"),  # non-numeric id
    ],
)
def test_bad_data_file_gives_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ratings: bytes, line: int, words: str
) -> None:
    path = write_ml100k(tmp_path, ratings)
    code = main(["train", "--dataset", "ml-100k", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 2
    assert f"{path}, line {line}" in error.replace("\n", "")
    assert words in error
    assert "Traceback" not in error


TOO_SMALL_LOGS = {
    # One user who has seen all six items: no negative to train or rank against.
    "one-user": ("user,item,time\n" + "".join(f"u1,i{item},{item}\n" for item in range(6)),
                 "user u1 has interacted with all 6 items of the catalogue"),
    # Five users of one item: one row each, after repeats are dropped, so nobody is held out.
    "one-item": ("user,item,time\n" + "".join(f"u{user},i1,{user}\n" for user in range(5)) + "u0,i1,9\n",
                 "data.split: the validation set is empty"),
    "one-row": ("user,item,time\nu1,i1,1\n", "data.split: the validation set is empty"),
}


@pytest.mark.parametrize("command", [
    ["train"],
    ["simulate", "--model", "neumf", "--not-private", "--rounds", "1", "--devices-per-round", "1"],
    ["simulate", "--model", "popularity", "--not-private", "--rounds", "1", "--devices-per-round", "1",
     "--engine", "cohort"],
], ids=["train", "simulate-flower", "simulate-cohort"])
@pytest.mark.parametrize("log", sorted(TOO_SMALL_LOGS))
def test_a_log_too_small_to_evaluate_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], log: str
) -> None:
    text, message = TOO_SMALL_LOGS[log]
    path = tmp_path / f"{log}.csv"
    path.write_text(text, encoding="utf-8")
    runs = tmp_path / "runs"
    code = main([*command, "--dataset", "file", "--output-dir", str(runs), "--set", f"data.path={str(path)!r}",
                 "--set", 'data.columns.user="user"', "--set", 'data.columns.item="item"',
                 "--set", 'data.columns.timestamp="time"'])
    captured = capsys.readouterr()
    assert code == 2
    assert message in " ".join(captured.err.split())
    assert "Traceback" not in captured.err + captured.out
    # Refused before Ray started or a run directory was made.
    assert not runs.exists() or not any(runs.iterdir())


def test_a_device_without_a_held_out_user_is_counted_as_evaluated_not_failed(tmp_path: Path) -> None:
    rows = [f"u{user},i{(user * 3 + step) % 20},{step}" for user in range(12) for step in range(6)]
    rows += ["short1,i1,1", "short2,i2,1", "short2,i3,2"]  # too short to hold anything out
    path = tmp_path / "log.csv"
    path.write_text("user,item,time\n" + "\n".join(rows) + "\n", encoding="utf-8")
    runs = tmp_path / "runs"
    code = main(["simulate", "--engine", "cohort", "--model", "popularity", "--not-private", "--rounds", "1",
                 "--devices-per-round", "14", "--dataset", "file", "--output-dir", str(runs),
                 "--set", f"data.path={str(path)!r}", "--set", 'data.columns.user="user"',
                 "--set", 'data.columns.item="item"', "--set", 'data.columns.timestamp="time"'])
    assert code == 0
    (run,) = runs.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_failures"] == 0
    assert 0 < summary["test"]["full/hr@10"] <= 1


def test_missing_dataset_says_where_to_put_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--dataset", "ml-100k", "--data-dir", str(tmp_path)])
    error = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "u.data" in error and str(tmp_path / "movielens-100k") in error
    assert "fedrec datasets download ml-100k" in error


def test_invalid_config_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--set", "train.learning_rate=-1", "--output-dir", str(tmp_path)])
    assert code == 2
    assert "train.learning_rate" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    write_ml100k(tmp_path, b"1\t1\t5\t100\n1\tx\t3\t4\n")
    completed = subprocess.run(
        [sys.executable, "-m", "server.cli", "train", "--dataset", "ml-100k", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    assert "line 2" in completed.stderr and "Traceback" not in completed.stderr


def test_datasets_list_and_info(datasets_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "list", "--data-dir", str(datasets_dir)]) == 0
    assert "amazon-beauty" in capsys.readouterr().out
    assert main(["datasets", "info", "ml-100k", "--data-dir", str(datasets_dir)]) == 0
    out = capsys.readouterr().out
    # A readable table: counts with separators, no Python dicts, no empty fields.
    assert "943" in out and "1,682" in out and "{" not in out and "checksums" not in out


def test_manifest_writes_what_the_server_may_know_and_says_how_to_pass_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_core.federated.manifest import read_manifest

    output = tmp_path / "federation.json"
    assert main(["manifest", "--dataset", "synthetic", "--output", str(output), *TINY_SYNTHETIC[:4]]) == 0
    manifest = read_manifest(output)
    assert manifest.num_partitions == 60 and manifest.n_items == 80 and manifest.canaries is None
    assert f'manifest="{output}"' in capsys.readouterr().out.replace("\n", "")
    assert manifest.authority_key() is None
    # With the deployment's device authority, the server will register only the devices it enrolled.
    from recsys_core.secure_aggregation.identity import DeviceAuthority, write_authority_key

    authority = DeviceAuthority.generate()
    write_authority_key(tmp_path / "device-authority.pub", authority.public_key)
    assert main(["manifest", "--dataset", "synthetic", "--output", str(output), *TINY_SYNTHETIC[:4],
                 "--device-authority", str(tmp_path / "device-authority.pub")]) == 0
    assert read_manifest(output).authority_key() == authority.public_key
    (tmp_path / "device-authority.pub").write_text("not hex\n")
    assert main(["manifest", "--dataset", "synthetic", "--output", str(output), *TINY_SYNTHETIC[:4],
                 "--device-authority", str(tmp_path / "device-authority.pub")]) == 2
    assert "not a device-authority public key" in capsys.readouterr().err


def test_a_model_chosen_by_name_starts_from_its_tuned_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import server.cli

    configs = tmp_path / "simulations" / "configs"
    (configs / "synthetic" / "centralized").mkdir(parents=True)
    (configs / "synthetic" / "centralized" / "neumf.toml").write_text(
        '[data]\ndataset = "synthetic"\n[data.synthetic]\nn_users = 60\nn_items = 50\n'
        '[model]\nname = "neumf"\n[model.options]\ngmf_dim = 6\nmlp_layers = [12, 6]\n[train]\nepochs = 9\n')
    monkeypatch.setattr(server.cli, "CONFIGS", configs)
    runs = tmp_path / "runs"
    argv = ["train", "--dataset", "synthetic", "--model", "neumf", "--epochs", "1", "--output-dir", str(runs)]
    assert main(argv) == 0
    assert "simulations/configs/synthetic/centralized/neumf.toml" in capsys.readouterr().out.replace("\n", "")
    (run_directory,) = runs.iterdir()
    config = json.loads((run_directory / "config.json").read_text())
    # The tuned options, with the flag (--epochs 1) over the file's 9 epochs.
    assert config["model"]["options"]["gmf_dim"] == 6 and config["train"]["epochs"] == 1
    # A model without a tuned config for the dataset keeps the model's defaults, silently.
    assert server.cli.tuned_config("synthetic", "sasrec") is None


def file_run(tmp_path: Path, *extra: str, command: str = "train", text: str | None = None) -> list[str]:
    path = tmp_path / "log.csv"
    path.write_text(text or "user,item,time\n" + "".join(f"u{u},i{(u + s) % 9},{s}\n" for u in range(6)
                                                         for s in range(5)), encoding="utf-8")
    return [command, "--dataset", "file", "--output-dir", str(tmp_path / "runs"), "--set", f"data.path={str(path)!r}",
            "--set", 'data.columns.user="user"', "--set", 'data.columns.item="item"', *extra]


@pytest.mark.parametrize(("extra", "message"), [
    # Text that looks like rich markup is printed as it is, not eaten.
    (["--set", 'data.columns.user="[/bold]"'], "the user column '[/bold]' is not in the file"),
    (["--set", 'data.columns.item="user"'], "data.columns.user and data.columns.item both name column 'user'"),
    (["--seed", "-1"], "train.seed: must not be negative, got -1"),
    (["--model", "neumf", "--set", "model.options.mlp_layers=[]"], "model.mlp_layers: needs widths of at least 1"),
    (["--model", "neumf", "--set", "model.options.dropout=2.0"], "model.dropout: must lie in [0, 1), got 2.0"),
    (["--set", "train.epochs=99999999999999999999"], "train.epochs: 99999999999999999999 does not fit in 64 bits"),
], ids=["markup", "one-column-two-roles", "negative-seed", "empty-mlp", "dropout-2", "beyond-64-bits"])
def test_more_bad_input_gets_one_clear_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            extra: list[str], message: str) -> None:
    assert main(file_run(tmp_path, *extra)) == 2
    captured = capsys.readouterr()
    assert message in " ".join(captured.err.split()) and "Traceback" not in captured.err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--seed", "-1"], "seed: must not be negative, got -1"),
    (["--set", "simulation.failing_partitions=[999]"], "simulation.failing_partitions: [999] name no device"),
], ids=["negative-seed", "failing-partition-out-of-range"])
def test_simulate_refuses_settings_that_name_nothing_real(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          extra: list[str], message: str) -> None:
    argv = file_run(tmp_path, "--model", "popularity", "--not-private", "--engine", "cohort", "--rounds", "1",
                    "--devices-per-round", "3", *extra, command="simulate")
    argv.insert(argv.index("--dataset") + 2, "--set")
    argv.insert(argv.index("--dataset") + 3, 'data.columns.timestamp="time"')
    assert main(argv) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_toml_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    from recsys_core.config import read_toml

    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[train]\nepochs = 3\n")
    assert read_toml(path) == {"train": {"epochs": 3}}


def test_writing_a_file_where_a_folder_is_names_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    assert main(["manifest", "--output", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'out'}: is a folder; give the path of a file to write" in \
        " ".join(capsys.readouterr().err.split())


def test_a_data_dir_that_is_a_file_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "good.csv"
    log.write_text("user,item\n1,2\n")
    assert main(["train", "--dataset", "ml-100k", "--data-dir", str(log), "--output-dir", str(tmp_path)]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert f"the data directory {log} is a file, not a folder" in error and "--dataset file" in error
