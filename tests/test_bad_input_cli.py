"""Bad input on the command line, as a new user types it: every case exits non-zero with one line on
stderr that says what was wrong, writes nothing, and shows the traceback only under --debug.

Each case is (id, argv, a phrase the line must hold). In argv, {art} is a verified image artifact
(copied per test, so a case may damage its copy), {bad} a folder of broken inputs made below, and
{out} a path the command must not create.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.artifacts import copy_artifact
from zoo.cli import main

CASES = [
    # names
    ("unknown-alias", ["info", "no-such-model"], "no-such-model"),
    ("timm-typo-suggests", ["info", "timm:resnet5O"], "resnet50"),
    ("timm-bad-tag", ["info", "timm:resnet50.bogus_tag"], "bogus_tag"),
    ("unknown-source", ["info", "foo:bar"], "foo:bar"),
    ("hf-name-without-repo", ["info", "hf:"], "hf:"),
    ("unknown-command", ["frobnicate"], "No such command 'frobnicate'"),
    ("unknown-task-filter", ["list", "--task", "nope"], "'nope' is not one of"),
    # registry files
    ("registry-missing", ["--registry", "{bad}/absent.yaml", "list"], "absent.yaml"),
    ("registry-not-yaml", ["--registry", "{bad}/broken.yaml", "list"], "broken.yaml"),
    ("registry-unknown-field", ["--registry", "{bad}/field.yaml", "list"], "unknown field"),
    ("registry-opset-out-of-range", ["--registry", "{bad}/opset.yaml", "list"], "opset"),
    ("registry-not-a-mapping", ["--registry", "{bad}/list.yaml", "list"], "list.yaml"),
    # export
    ("export-unknown-name", ["export", "no-such-model", "--out", "{out}"], "no-such-model"),
    ("export-opset-too-old", ["export", "timm:test_resnet", "--random-init", "--opset", "5", "--out", "{out}"],
     "--opset"),
    ("export-negative-atol", ["export", "timm:test_resnet", "--random-init", "--atol", "-1", "--out", "{out}"],
     "--atol"),
    ("export-unknown-optimize", ["export", "timm:test_resnet", "--random-init", "--optimize", "warp", "--out",
                                 "{out}"], "warp"),
    ("export-out-through-a-file", ["export", "timm:test_resnet", "--random-init", "--out", "{bad}/plain.txt/x"],
     "plain.txt"),
    ("export-out-in-proc", ["export", "timm:test_resnet", "--random-init", "--out", "/proc/zoo-x"], "/proc/zoo-x"),
    ("export-folder-not-a-model", ["export", "{bad}", "--out", "{out}"], "{bad}"),
    # finetune
    ("finetune-unknown-name", ["finetune", "no-such-model", "--data", "builtin:digits", "--out", "{out}"],
     "no-such-model"),
    ("finetune-unknown-builtin", ["finetune", "timm:test_resnet", "--random-init", "--data", "builtin:nope",
                                  "--out", "{out}"], "builtin:nope"),
    ("finetune-missing-data", ["finetune", "timm:test_resnet", "--random-init", "--data", "{bad}/absent.csv",
                               "--out", "{out}"], "absent.csv"),
    ("finetune-empty-csv", ["finetune", "timm:test_resnet", "--random-init", "--data", "{bad}/empty.csv",
                            "--out", "{out}"], "empty.csv"),
    ("finetune-bad-strategy", ["finetune", "timm:test_resnet", "--data", "builtin:digits", "--strategy", "mpi"],
     "'mpi' is not one of"),
    ("finetune-negative-lr", ["finetune", "timm:test_resnet", "--random-init", "--data", "builtin:digits",
                              "--lr", "-1", "--out", "{out}"], "lr"),
    ("finetune-zero-epochs", ["finetune", "timm:test_resnet", "--random-init", "--data", "builtin:digits",
                              "--epochs", "0", "--out", "{out}"], "epochs"),
    ("finetune-out-is-a-file", ["finetune", "timm:test_resnet", "--random-init", "--data", "builtin:digits",
                                "--out", "{bad}/plain.txt"], "plain.txt"),
    ("finetune-resume-nothing", ["finetune", "timm:test_resnet", "--random-init", "--data", "builtin:digits",
                                 "--resume", "--out", "{out}"], "resume"),
    # artifacts
    ("verify-missing-folder", ["verify", "{bad}/absent"], "absent"),
    ("verify-folder-without-manifest", ["verify", "{bad}"], "manifest.json"),
    ("verify-manifest-not-json", ["verify", "{art}"], "manifest.json"),
    ("verify-future-format", ["verify", "{art}"], "format_version"),
    ("verify-truncated-model", ["verify", "{art}"], "model.onnx"),
    ("verify-traversal", ["verify", "{art}"], "../"),
    ("load-future-format", ["predict", "{art}", "{bad}/dot.png"], "format_version"),
    # predict
    ("predict-missing-image", ["predict", "{art}", "{bad}/absent.png"], "does not exist"),
    ("predict-directory-without-images", ["predict", "{art}", "{bad}/empty-dir"], "empty-dir"),
    ("predict-url", ["predict", "{art}", "https://example.com/x.png"], "https://example.com/x.png"),
    ("predict-corrupt-image", ["predict", "{art}", "{bad}/corrupt.png"], "corrupt.png"),
    ("predict-text-as-image", ["predict", "{art}", "{bad}/notes.txt"], "notes.txt"),
    ("predict-missing-list", ["predict", "{art}", "@{bad}/absent-list.txt"], "absent-list.txt"),
    ("predict-bad-out-suffix", ["predict", "{art}", "{bad}/dot.png", "--out", "{out}.xlsx"], ".xlsx"),
    ("predict-zero-top-k", ["predict", "{art}", "{bad}/dot.png", "--top-k", "0"], "--top-k"),
    ("predict-zero-batch", ["predict", "{art}", "{bad}/dot.png", "--batch-size", "0"], "--batch-size"),
    ("predict-unknown-provider", ["predict", "{art}", "{bad}/dot.png", "--provider", "WarpProvider"],
     "WarpProvider"),
    ("predict-threshold-on-a-classifier", ["predict", "{art}", "{bad}/dot.png", "--threshold", "0.5"],
     "threshold"),
    # bench, optimize, serve, triton
    ("bench-zero-batch", ["bench", "{art}", "--batch-sizes", "0"], "batch"),
    ("bench-words-for-batch", ["bench", "{art}", "--batch-sizes", "one,two"], "batch"),
    ("optimize-unknown-level", ["optimize", "{art}", "--level", "warp", "--out", "{out}"], "warp"),
    ("optimize-missing-artifact", ["optimize", "{bad}/absent", "--out", "{out}"], "absent"),
    ("serve-missing-artifact", ["serve", "{bad}/absent"], "absent"),
    ("triton-into-a-file", ["triton", "{art}", "{bad}/plain.txt"], "plain.txt"),
]

# What each artifact case does to its copy of the artifact before the command runs.
DAMAGE = {
    "verify-manifest-not-json": lambda art: (art / "manifest.json").write_text("{not json"),
    "verify-future-format": lambda art: _edit_manifest(art, format_version=99),
    "load-future-format": lambda art: _edit_manifest(art, format_version=99),
    "verify-truncated-model": lambda art: (art / "model.onnx").write_bytes((art / "model.onnx").read_bytes()[:100]),
    "verify-traversal": lambda art: _edit_manifest(art, files={"../outside.json": {"sha256": "0" * 64, "size": 2}}),
}


def _edit_manifest(art: Path, **changes: object) -> None:
    path = art / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        manifest[key] = {**manifest[key], **value} if isinstance(value, dict) else value
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Broken inputs of every kind (and one good picture), in a folder that is no model."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("bad")
    (folder / "broken.yaml").write_text("models: [unclosed\n")
    (folder / "field.yaml").write_text("models:\n  mine:\n    source: timm\n    id: resnet18\n    colour: red\n")
    (folder / "opset.yaml").write_text("models:\n  mine:\n    source: timm\n    id: resnet18\n    export:\n"
                                       "      opset: 99\n")
    (folder / "list.yaml").write_text("- just\n- a list\n")
    (folder / "empty.csv").write_text("")
    (folder / "plain.txt").write_text("a file, not a folder\n")
    (folder / "notes.txt").write_text("not a picture\n")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "empty-dir").mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(folder / "dot.png")
    return folder


def _tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``roots`` with its size and modification time: what 'nothing written' compares."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots if root.exists()
            for p in sorted(root.rglob("*"))}


def _argv(case: str, argv: list[str], bad: Path, art: Path, out: Path) -> list[str]:
    return [a.format(bad=bad, art=art, out=out) for a in argv]


@pytest.fixture
def setup(case_id: str, bad: Path, timm_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    art = copy_artifact(timm_artifact, tmp_path / "art")
    if case_id in DAMAGE:
        DAMAGE[case_id](art)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # default output folders (runs/, artifacts/) would land here
    return art, tmp_path / "out"


@pytest.fixture
def case_id(request: pytest.FixtureRequest) -> str:
    return request.param


def _case(case_id: str) -> tuple[list[str], str]:
    return next((argv, phrase) for cid, argv, phrase in CASES if cid == case_id)


IDS = [c[0] for c in CASES]


def test_there_are_forty_cases_or_more() -> None:
    assert len(IDS) >= 40 and len(set(IDS)) == len(IDS)


def refusal_problem(code: object, err: str, phrase: str) -> str | None:
    """What is wrong with how a command refused bad input, or None when it is one clear line."""
    lines = err.strip().splitlines()
    if code in (0, None):
        return f"exit code {code!r}"
    if "Traceback" in err:
        return "a traceback"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"{len(lines)} lines instead of one 'error: ...' line"
    if phrase not in lines[0]:
        return f"the line does not name {phrase!r}"
    return None


@pytest.mark.parametrize("case_id", IDS, indirect=True)
def test_bad_input_is_one_line_and_writes_nothing(case_id: str, setup, bad: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    art, out = setup
    argv, phrase = _case(case_id)
    before = _tree(tmp_path, bad)
    with pytest.raises(SystemExit) as info:
        main(_argv(case_id, argv, bad, art, out))
    _, err = capsys.readouterr()
    assert refusal_problem(info.value.code, err, phrase.format(bad=bad)) is None, err
    assert _tree(tmp_path, bad) == before, "a refused command wrote files"


@pytest.mark.parametrize("case_id", ["unknown-alias", "registry-not-yaml", "export-opset-too-old",
                                     "finetune-missing-data", "verify-truncated-model", "predict-corrupt-image",
                                     "predict-zero-top-k"], indirect=True)
def test_debug_shows_the_traceback(case_id: str, setup, bad: Path) -> None:
    art, out = setup
    argv, _ = _case(case_id)
    with pytest.raises(Exception) as info:  # noqa: PT011 - any exception: the point is that it propagates
        main(["--debug", *_argv(case_id, argv, bad, art, out)])
    assert not isinstance(info.value, SystemExit)


@pytest.mark.parametrize("code, err, problem", [
    (0, "error: no such model\n", "exit code 0"),
    (1, "Traceback (most recent call last):\n  File x\nValueError: boom\n", "a traceback"),
    (2, "Usage: zoo x\nTry 'zoo x --help'\n\nError: bad\n", "4 lines"),
    (1, "something failed\n", "1 lines instead"),
    (1, "error: it broke\n", "does not name"),
])
def test_the_refusal_check_catches_each_fault(code: int, err: str, problem: str) -> None:
    found = refusal_problem(code, err, "the-input")
    assert found is not None and problem in found


def test_the_tree_check_sees_a_written_file(tmp_path: Path) -> None:
    before = _tree(tmp_path)
    (tmp_path / "half-written").write_text("x")
    assert _tree(tmp_path) != before
