"""Run results: atomic folders, run ids from params, provenance files, byte-stable CSV tables."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from mlmc.book import start_run

PARAMS = {"seed": 3, "device": "cpu", "profile": "smoke", "langs": ("l0", "l1"), "lr": 0.1}


def table(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"lang": ["l0", "l1", "l2"], "score": rng.random(3) / 3, "n": [1, 2, 3]})


def test_run_folder_appears_only_on_finish(tmp_path):
    run = start_run("01_data_sharing", PARAMS, root=tmp_path)
    run.save_table("scores", table(0))
    assert not run.path.exists(), "an unfinished run must not be visible"
    assert run.dir.parent == run.path.parent and run.dir.name.startswith(".")
    final = run.finish()
    assert final == tmp_path / "01_data_sharing" / run.run_id and final.is_dir()
    assert sorted(p.name for p in final.iterdir()) == ["env.json", "params.yaml", "scores.csv"]
    assert [p.name for p in final.parent.iterdir()] == [run.run_id], "no temp folder may be left behind"


def test_params_and_environment_are_recorded(tmp_path):
    path = start_run("01_data_sharing", PARAMS, root=tmp_path).finish()
    assert yaml.safe_load((path / "params.yaml").read_text()) == {**PARAMS, "langs": ["l0", "l1"]}
    env = json.loads((path / "env.json").read_text())
    assert env["seed"] == 3 and env["profile"] == "smoke" and env["device"].startswith("cpu")
    assert env["packages"]["torch"].startswith("2.") and env["packages"]["transformers"]
    assert env["torch_threads"] >= 1 and env["git"]


def test_run_id_depends_on_params_only(tmp_path):
    a = start_run("01_data_sharing", PARAMS, root=tmp_path)
    b = start_run("01_data_sharing", dict(reversed(list(PARAMS.items()))), root=tmp_path)
    c = start_run("01_data_sharing", {**PARAMS, "seed": 4}, root=tmp_path)
    assert a.run_id == b.run_id != c.run_id
    assert a.run_id.startswith("smoke-") and start_run("01_x", {"seed": 0}, root=tmp_path).run_id.startswith("default-")
    for run in (a, b, c):
        run.abort()
    assert not (tmp_path / "01_data_sharing").exists() or not any((tmp_path / "01_data_sharing").iterdir())


def test_same_params_give_byte_identical_csv(tmp_path):
    paths, blobs = [], []
    for _ in range(2):
        with start_run("01_data_sharing", PARAMS, root=tmp_path) as run:
            run.save_table("scores", table(PARAMS["seed"]))
        paths.append(run.path / "scores.csv")
        blobs.append(paths[-1].read_bytes())
    assert paths[0] == paths[1] and blobs[0] == blobs[1]
    text = blobs[0].decode()
    assert "\r" not in text and text.splitlines()[0] == "lang,score,n"
    expected = [f"{v:.8g}" for v in table(PARAMS["seed"])["score"]]
    assert [line.split(",")[1] for line in text.splitlines()[1:]] == expected


def test_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), start_run("02_subnetworks", PARAMS, root=tmp_path) as run:
        run.save_table("partial", table(0))
        raise RuntimeError("boom")
    assert not any((tmp_path / "02_subnetworks").iterdir())


def test_save_figure_and_bad_names(tmp_path):
    run = start_run("01_data_sharing", PARAMS, root=tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    run.save_figure("curve", fig)
    plt.close(fig)
    with pytest.raises(ValueError, match="parameter 'name' must be a plain file name"):
        run.save_table("../escape", table(0))
    with pytest.raises(ValueError, match=r"parameter 'fmt' must be one of \['png', 'svg', 'pdf'\]"):
        run.save_figure("curve", fig, fmt="gif")
    path = run.finish()
    assert (path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(RuntimeError, match="is finished"):
        run.save_table("late", table(0))


def test_start_run_validates_chapter_and_default_root(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="parameter 'chapter' must look like 'NN_slug'"):
        start_run("data_sharing", PARAMS)
    with pytest.raises(ValueError, match="parameter 'params' must be a dict"):
        start_run("01_data_sharing", [1, 2])
    monkeypatch.setenv("MLMC_RESULTS", str(tmp_path / "elsewhere"))
    assert start_run("01_data_sharing", PARAMS).finish().parent == tmp_path / "elsewhere" / "01_data_sharing"
