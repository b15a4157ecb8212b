"""The book runner: parameter parsing and validation, papermill execution, post-processing, the ``mlmc`` CLI.

Uses throwaway notebooks written into tmp_path, never the real chapters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from mlmc import cli
from mlmc.book import ChapterFailed, parse_overrides, parse_parameters, resolve, run_chapter
from mlmc.book.params import conforms, notebook_parameters
from mlmc.book.postprocess import FOLD_TAG, RUN_TABLE_TAG
from mlmc.book.results import RUN_TAG_FILE

PARAMS = """\
seed: int = 0  # random seed
device: str = "cpu"  # torch device
profile: str = "default"  # set by the runner
n: int = 3  # help: number of items
lr: float = 0.1  # learning rate
langs: list[str] = ["l0", "l1"]  # languages to use
mode: str | None = None  # optional mode
"""


def write_notebook(folder: Path, stem: str, body: list[str], params: str = PARAMS) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem}"), nbformat.v4.new_code_cell(params)]
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in body]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A notebooks folder with a passing chapter (01), a failing one (02) and a chapter that checks its values (03)."""
    nbs = tmp_path / "notebooks"
    write_notebook(nbs, "01_ok", ["print('n =', n, 'langs =', langs)", "total = n * lr"])
    write_notebook(nbs, "02_broken", ["raise ValueError('planted failure in the first cell')", "print('unreachable')"])
    write_notebook(nbs, "03_checked", ["from mlmc.errors import check_positive\ncheck_positive('n', n)"])
    (nbs / "params" / "smoke").mkdir(parents=True)
    (nbs / "params" / "smoke" / "01_ok.yaml").write_text("n: 1\nlangs: [l0]\n")
    return tmp_path


# ---- parameters cell -------------------------------------------------------------------------------------------


def test_parse_parameters_reads_types_defaults_and_help():
    params = parse_parameters(PARAMS)
    assert list(params) == ["seed", "device", "profile", "n", "lr", "langs", "mode"]
    assert params["n"].default == 3 and params["n"].annotation == "int" and params["n"].help == "number of items"
    assert params["langs"].default == ["l0", "l1"] and params["langs"].help == "languages to use"
    assert params["mode"].annotation == "str | None" and params["mode"].default is None


def test_parse_parameters_multiline_value_takes_help_from_last_line():
    params = parse_parameters('sizes: dict[str, int] = {\n    "a": 1,\n    "b": 2,\n}  # size per split\n')
    assert params["sizes"].default == {"a": 1, "b": 2} and params["sizes"].help == "size per split"
    params = parse_parameters('langs: list[str] = [  # help: languages\n    "l0",\n]\n')
    assert params["langs"].default == ["l0"] and params["langs"].help == "languages"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("n = 3  # no annotation", "is not 'name: type = value"),
        ("n: int = 3", "has no '# help' comment"),
        ("n: int = 3  #   ", "has no '# help' comment"),
        ("n: int = 'three'  # a size", "does not match its type int"),
        ("n: int = len('abc')  # a size", "needs a literal default"),
        ("import os", "is not 'name: type = value"),
        ("n: int = 1  # a\nn: int = 2  # b", "declared twice"),
        ("n: numpy.int64 = 1  # a size", "unsupported type"),
        ("n: int = (  # a size", "not valid Python"),
    ],
)
def test_parse_parameters_rejects_bad_lines(source, message):
    with pytest.raises(ValueError, match=message):
        parse_parameters(source)


@pytest.mark.parametrize(
    ("value", "annotation", "ok"),
    [
        (3, int, True),
        (True, int, False),
        (3, float, True),
        ("3", float, False),
        (["a", "b"], list[str], True),
        (["a", 1], list[str], False),
        ({"a": 1.5}, dict[str, float], True),
        ({"a": "x"}, dict[str, float], False),
        (None, int | None, True),
        ("x", int | None, False),
        ((1, "a"), tuple[int, str], True),
        ((1, 2), tuple[int, str], False),
    ],
)
def test_conforms(value, annotation, ok):
    assert conforms(value, annotation) is ok


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["n=5", "langs=[l0, l2]", "flag=true", "name=abc", "empty="]) == {
        "n": 5,
        "langs": ["l0", "l2"],
        "flag": True,
        "name": "abc",
        "empty": "",
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["n"])


# ---- resolve: profile files and overrides, checked before any compute ------------------------------------------


def test_resolve_merges_default_profile_and_overrides(project):
    nb = project / "notebooks" / "01_ok.ipynb"
    values, declared = resolve(nb, "smoke", {"lr": "1e-3"})  # YAML reads 1e-3 as text; floats accept it
    assert values == {
        "seed": 0,
        "device": "cpu",
        "profile": "smoke",
        "n": 1,
        "lr": 0.001,
        "langs": ["l0"],
        "mode": None,
    }
    assert declared["n"].default == 3


@pytest.mark.parametrize(
    ("profile", "overrides", "message"),
    [
        ("default", {"bogus": 1}, r"unknown parameter\(s\) \['bogus'\] for 01_ok; allowed: \['device', 'langs'"),
        ("default", {"n": "many"}, "parameter 'n' must be of type int, got 'many'"),
        ("default", {"langs": "l0"}, r"parameter 'langs' must be of type list\[str\]"),
        ("default", {"mode": 3}, r"parameter 'mode' must be of type str \| None, got 3"),
        ("default", {"profile": "full"}, "parameter 'profile' is set by the runner"),
        ("nightly", {}, r"parameter 'profile' must be one of \['default', 'smoke', 'full', 'gpu'\]"),
        ("full", {}, "parameter 'profile': 01_ok has no 'full' profile"),
    ],
)
def test_resolve_rejects_bad_parameters_with_named_errors(project, profile, overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve(project / "notebooks" / "01_ok.ipynb", profile, overrides)


def test_unknown_key_in_profile_file_is_rejected(project):
    (project / "notebooks" / "params" / "smoke" / "01_ok.yaml").write_text("n_items: 2\n")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['n_items'\]"):
        resolve(project / "notebooks" / "01_ok.ipynb", "smoke")


def test_notebook_must_declare_seed_device_profile(tmp_path):
    nb = write_notebook(tmp_path, "04_bare", [], params="n: int = 1  # a size\n")
    with pytest.raises(ValueError, match="must declare 'seed: int"):
        notebook_parameters(nb)


def test_bad_parameter_fails_before_any_compute(project, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("papermill must not start when a parameter is bad")

    monkeypatch.setattr("papermill.execute_notebook", never)
    out = project / "out"
    with pytest.raises(ValueError, match="unknown parameter"):
        run_chapter("01", overrides={"bogus": 1}, notebooks_dir=project / "notebooks", out_dir=out)
    with pytest.raises(ValueError, match="parameter 'chapter' must be NN or NN_slug of one of"):
        run_chapter("09", notebooks_dir=project / "notebooks", out_dir=out)
    assert not out.exists() or not any(out.iterdir())


# ---- execution (real papermill runs of tiny notebooks) ---------------------------------------------------------


def test_run_chapter_writes_postprocessed_notebook(project):
    out = project / "book" / "chapters"
    out.mkdir(parents=True)
    (out / "01_ok.md").write_text("# placeholder\n")
    path = run_chapter("01", "smoke", {"seed": 7}, notebooks_dir=project / "notebooks", out_dir=out)

    assert path == out / "01_ok.ipynb"
    assert not (out / "01_ok.md").exists(), "the placeholder page of the chapter must be replaced"
    assert sorted(p.name for p in out.iterdir()) == ["01_ok.ipynb"], "no temp files may be left behind"
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.papermill.exception is None or nb.metadata.papermill.exception is False
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    i_params = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert FOLD_TAG in tags[i_params], "the parameters cell is folded on the page"
    assert "injected-parameters" in tags[i_params + 1] and "remove-cell" in tags[i_params + 1]
    assert RUN_TABLE_TAG in tags[i_params + 2] and nb.cells[i_params + 2].cell_type == "markdown"
    table = nb.cells[i_params + 2].source
    assert "Profile `smoke`" in table and "git `" in table and "runtime" in table and "device cpu" in table
    assert table.startswith(":::{admonition} Run parameters.") and ":class: dropdown" in table, "a folded dropdown"
    assert nb.metadata.mlmc["profile"] == "smoke" and nb.metadata.mlmc["runtime_s"] > 0
    assert "| `n` | **`1`** | `3` | number of items |" in table
    assert "| `seed` | **`7`** | `0` | random seed |" in table
    assert "| `lr` | `0.1` | `0.1` | learning rate |" in table
    printed = "".join(o.get("text", "") for o in nb.cells[i_params + 3].outputs)
    assert printed == "n = 1 langs = ['l0']\n"
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells)


def test_failing_notebook_is_not_written(project):
    out = project / "book" / "chapters"
    out.mkdir(parents=True)
    (out / "02_broken.md").write_text("# placeholder\n")
    with pytest.raises(
        ChapterFailed, match="02_broken failed in cell .* ValueError: planted failure in the first cell"
    ):
        run_chapter("02_broken", notebooks_dir=project / "notebooks", out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["02_broken.md"]


def test_value_checked_inside_notebook_is_one_line_naming_cell_and_fix(project):
    out = project / "out"
    with pytest.raises(ChapterFailed) as exc:
        run_chapter("03", overrides={"n": -1}, notebooks_dir=project / "notebooks", out_dir=out)
    message = str(exc.value)
    assert exc.value.user_error and "\n" not in message and "Traceback" not in message
    assert message == (
        "03_checked: cell 3 ('from mlmc.errors import check_positive'): parameter 'n' must be > 0, got -1; "
        "fix: rerun with -p n=<allowed value>"
    )
    assert not (out / "03_checked.ipynb").exists()


def test_unexpected_error_keeps_its_traceback(project):
    with pytest.raises(ChapterFailed) as exc:
        run_chapter("02", notebooks_dir=project / "notebooks", out_dir=project / "out")
    message = str(exc.value)
    assert not exc.value.user_error and '02_broken failed in cell 3 ("raise ValueError(' in message
    assert "Traceback" in message or "----> 1 raise ValueError" in message, message


def test_offline_model_error_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cell = "from mlmc.models import load\nload('nobody/no-such-model', 'mlm')"
    write_notebook(tmp_path / "notebooks", "05_hub", [cell])
    with pytest.raises(ChapterFailed) as exc:
        run_chapter("05", notebooks_dir=tmp_path / "notebooks", out_dir=tmp_path / "out")
    message = str(exc.value)
    assert exc.value.user_error and "\n" not in message and "Traceback" not in message
    assert message.startswith("05_hub: cell 3 ('from mlmc.models import load'): model 'nobody/no-such-model' is")
    assert "HF_HUB_OFFLINE" in message and "huggingface-cli download" in message


def test_cli_prints_one_mlmc_line_for_a_user_error(project, capsys):
    args = ["run", "03", "-p", "n=-1", "--notebooks", str(project / "notebooks"), "--out", str(project / "out")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlmc: 03_checked: cell 3 ") and "must be > 0" in err[0]


# ---- clean failures: nothing left behind, every process stopped ------------------------------------------------

LEAKY_PARAMS = PARAMS + 'pid_file: str = ""  # where the notebook writes the pids it starts\n'
LEAKY_PARAMS += "sleep_s: float = 0.0  # seconds to sleep after starting the workers\n"
LEAKY_CELLS = [
    # a results folder that is never finished, pool workers, multiprocessing's resource tracker and a child that
    # outlives a clean kernel shutdown (as busy workers did in issue 7)
    "from mlmc.book import start_run\nrun = start_run('06_leaky', params={'seed': seed})\n"
    "run.save_table('t', __import__('pandas').DataFrame({'a': [1]}))",
    "import json, multiprocessing, os, time\nfrom multiprocessing import resource_tracker\n"
    "pool = multiprocessing.get_context('fork').Pool(2)\nresource_tracker.ensure_running()\n"
    "stray = __import__('subprocess').Popen(['sleep', '600'])\n"
    "pids = [p.pid for p in pool._pool] + [resource_tracker._resource_tracker._pid, os.getpid(), stray.pid]\n"
    "open(pid_file, 'w').write(json.dumps(pids))\ntime.sleep(sleep_s)",
    "raise RuntimeError('planted failure after starting workers')",
]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's reaping is left


def _assert_all_stopped(pids: list[int], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "processes started by the chapter outlived the run"


def _leftovers(results: Path, out: Path) -> list[str]:
    hidden = [str(p) for p in results.glob("06_leaky/.*")]
    return hidden + [p.name for p in out.glob("*")] if out.exists() else hidden


@pytest.fixture
def leaky(tmp_path: Path) -> Path:
    write_notebook(tmp_path / "notebooks", "06_leaky", LEAKY_CELLS, params=LEAKY_PARAMS)
    return tmp_path


def test_failed_run_stops_its_processes_and_leaves_no_results(leaky, _results_in_tmp):
    pid_file, out = leaky / "pids.json", leaky / "out"
    with pytest.raises(ChapterFailed, match="planted failure after starting workers"):
        run_chapter("06", overrides={"pid_file": str(pid_file)}, notebooks_dir=leaky / "notebooks", out_dir=out)
    pids = json.loads(pid_file.read_text())
    assert len(pids) == 5
    _assert_all_stopped(pids)
    assert _leftovers(_results_in_tmp, out) == [], "a failed run must leave no temp folder and no notebook"


def test_finished_results_carry_no_run_tag(project, _results_in_tmp):
    cell = "from mlmc.book import start_run\nwith start_run('01_ok', params={'seed': seed, 'n': n}) as run:\n    pass"
    write_notebook(project / "notebooks", "01_ok", [cell])
    run_chapter("01", notebooks_dir=project / "notebooks", out_dir=project / "out")
    folders = list((_results_in_tmp / "01_ok").iterdir())
    assert folders and all(not f.name.startswith(".") for f in folders)
    assert not list((_results_in_tmp / "01_ok").glob(f"*/{RUN_TAG_FILE}"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_stops_every_process(leaky, sig, tmp_path):
    pid_file, out, results = leaky / "pids.json", leaky / "out", tmp_path / "results"
    cmd = [sys.executable, "-m", "mlmc.cli", "run", "06", "--notebooks", str(leaky / "notebooks"), "--out", str(out)]
    cmd += ["-p", f"pid_file={pid_file}", "-p", "sleep_s=120"]
    env = {**os.environ, "MLMC_RESULTS": str(results)}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert pid_file.exists(), f"the notebook never started its workers: {proc.stderr.read() if proc.poll() else ''}"
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("mlmc: interrupted"), err
    _assert_all_stopped(json.loads(pid_file.read_text()))
    assert _leftovers(results, out) == []


# ---- CLI -------------------------------------------------------------------------------------------------------


def test_cli_reports_bad_parameter_with_exit_code_2(project, capsys):
    code = cli.main(["run", "01", "-p", "n=-x", "--notebooks", str(project / "notebooks"), "--out", str(project)])
    assert code == 2
    assert "parameter 'n' must be of type int" in capsys.readouterr().err


def test_cli_run_all_checks_every_chapter_before_running_any(project, monkeypatch, capsys):
    ran: list[str] = []
    monkeypatch.setattr(cli, "run_chapter", lambda nb, *a, **k: ran.append(nb.stem) or nb)
    code = cli.main(["run", "all", "--profile", "smoke", "--notebooks", str(project / "notebooks")])
    assert code == 2 and ran == [], "02_broken has no smoke profile, so nothing may run"
    assert "02_broken has no 'smoke' profile" in capsys.readouterr().err
    code = cli.main(["run", "all", "--notebooks", str(project / "notebooks")])
    assert code == 0 and ran == ["01_ok", "02_broken", "03_checked"]


def test_cli_rejects_unknown_profile():
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "01", "--profile", "huge"])
    assert exc.value.code == 2


def test_cli_list_shows_every_chapter(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for stem in ["00_world", "01_data_sharing", "04_stereotypes", "07_debiasing"]:
        assert stem in out
