"""The CLI as a user meets it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zoo.spec import SOURCES, TASKS


def zoo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_list_json_has_both_sources_and_all_tasks():
    result = zoo("list", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) >= 16
    assert {r["source"] for r in rows} == set(SOURCES)
    assert {r["task"] for r in rows} == set(TASKS)


def test_list_filters_by_task_and_rejects_unknown_task():
    rows = json.loads(zoo("list", "--task", "feature-extraction", "--json").stdout)
    assert rows and all(r["task"] == "feature-extraction" for r in rows)
    bad = zoo("list", "--task", "translation")
    assert bad.returncode != 0
    assert "translation" in bad.stderr and "image-classification" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("name", ["resnet50", "timm:resnet18.a1_in1k"])
def test_info_on_alias_and_timm_id(name):
    result = zoo("info", name, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"] == "timm"


def test_info_on_local_folders(minilm_dir, tiny_text_classifier):
    st = json.loads(zoo("info", str(minilm_dir), "--json").stdout)
    assert st["task"] == "feature-extraction" and st["preprocess"]["pooling"] == "mean"
    table = zoo("info", str(tiny_text_classifier))
    assert table.returncode == 0 and "text-classification" in table.stdout
    assert "input_ids int64[batch, sequence]" in table.stdout


def test_info_on_hf_id_from_cache(tmp_path, minilm_dir):
    import shutil

    repo = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2"
    shutil.copytree(minilm_dir, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    result = zoo("info", "hf:sentence-transformers/all-MiniLM-L6-v2", "--json",
                 env={"HF_HUB_CACHE": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["task"] == "feature-extraction"


def test_misspelt_name_gets_suggestions_exit_1_no_traceback():
    result = zoo("info", "resnet5")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "did you mean 'resnet50'" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = zoo("--debug", "info", "resnet5")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "NameNotFoundError" in result.stderr


def test_registry_option_and_env_var(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("models:\n  tiny-vit:\n    source: timm\n    id: test_vit\n"
                     "    task: image-classification\n    description: my tiny vit\n")
    by_flag = json.loads(zoo("--registry", str(extra), "list", "--json").stdout)
    assert "tiny-vit" in {r["alias"] for r in by_flag}
    by_env = json.loads(zoo("list", "--json", env={"ZOO_REGISTRY": str(extra)}).stdout)
    assert "tiny-vit" in {r["alias"] for r in by_env}


def test_broken_registry_file_is_one_clear_error(tmp_path):
    extra = tmp_path / "bad.yaml"
    extra.write_text("models:\n  x:\n    source: nope\n")
    result = zoo("--registry", str(extra), "list")
    assert result.returncode == 1
    assert "bad.yaml:2: entry 'x'" in result.stderr and "missing field 'id'" in result.stderr
    assert "Traceback" not in result.stderr


def test_version():
    from zoo import __version__

    result = zoo("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"zoo {__version__}"


def test_import_zoo_is_light():
    code = ("import sys, zoo; zoo.resolve; from zoo.cli import main; "
            "heavy = [m for m in ('torch', 'transformers', 'timm', 'onnxruntime') if m in sys.modules]; "
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_is_fast_and_light():
    code = ("import sys; from zoo.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'transformers', 'timm') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("[]"), result.stdout + result.stderr
