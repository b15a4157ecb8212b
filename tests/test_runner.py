"""The book runner: parameter parsing and validation, papermill execution, post-processing, the ``mlmc`` CLI.

Uses throwaway notebooks written into tmp_path, never the real chapters.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from mlmc import cli
from mlmc.book import ChapterFailed, parse_overrides, parse_parameters, resolve, run_chapter
from mlmc.book.params import conforms, notebook_parameters
from mlmc.book.postprocess import RUN_TABLE_TAG

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
        ("nightly", {}, r"parameter 'profile' must be one of \['default', 'smoke', 'full'\]"),
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
    assert "injected-parameters" in tags[i_params + 1] and "remove-cell" in tags[i_params + 1]
    assert RUN_TABLE_TAG in tags[i_params + 2] and nb.cells[i_params + 2].cell_type == "markdown"
    table = nb.cells[i_params + 2].source
    assert "Profile `smoke`" in table and "git `" in table and "runtime" in table and "device cpu" in table
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


def test_value_checked_inside_notebook_names_the_parameter(project):
    out = project / "out"
    with pytest.raises(ChapterFailed, match=r"ValueError: parameter 'n' must be > 0, got -1"):
        run_chapter("03", overrides={"n": -1}, notebooks_dir=project / "notebooks", out_dir=out)
    assert not (out / "03_checked.ipynb").exists()


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
