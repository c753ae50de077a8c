"""The `pvtbuild` command as a user runs it (click's CliRunner, real files, real FluidSynth):
`render` over the edge-case folder, bad config values, the README's render commands, and
`select --manifest`, which rebuilds the committed manifests/demo.jsonl."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conftest import BOMB, write_slow_midi
from paths import EDGE, LAKH, REPO
from pvtbuild.cli import cli

EXAMPLES = REPO / "examples" / "midi"
ONE_LINE_REASON = re.compile(r"skipped: [^\n]{1,200}")


def pvtbuild(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- bad input --------------------------------------------------------------------------


def test_edge_case_folder_renders_with_exit_0_and_every_file_yields_clips_or_a_one_line_skip(tmp_path):
    midi = tmp_path / "midi"
    midi.mkdir()
    for f in sorted(EDGE.glob("*.mid")):
        (midi / f.name).symlink_to(f)
    write_slow_midi(midi / "zz-hangs-the-parser.mid")
    pipeline = tmp_path / "edge.yaml"
    pipeline.write_text("select:\n  parse_timeout: 2\n")
    out = tmp_path / "out"

    result = pvtbuild("render", "--pipeline", pipeline, "--midi", midi, "--out", out, "--scheduler", "sync")

    assert result.exit_code == 0, result.output
    assert_no_traceback(result)
    files = {r["inputs"]["source"].rsplit("/", 1)[-1]: r for r in rows(out / "select" / "manifest.jsonl")
             if r["stage"] == "select"}
    assert sorted(files) == sorted(p.name for p in midi.iterdir())  # every input file has its row
    for name, row in files.items():
        assert row["status"] == "ok" or ONE_LINE_REASON.fullmatch(row["status"]), (name, row["status"])
    assert files["zz-hangs-the-parser.mid"]["status"] == "skipped: parse timed out after 2 s"
    assert files["jazzsoft__test-not-a-midi-file.mid"]["status"] == "skipped: not a MIDI file (bad header)"

    rendered = rows(out / "render" / "manifest.jsonl")
    per_file = Counter(r["inputs"]["source"] for r in rendered)
    ok_files = {name: row["info"]["clips"] for name, row in files.items() if row["status"] == "ok"}
    assert len(ok_files) >= 15
    assert per_file == Counter(ok_files)  # each selected clip has exactly one render row
    assert all(r["status"] == "ok" or ONE_LINE_REASON.fullmatch(r["status"]) for r in rendered)
    n_ok = sum(r["status"] == "ok" for r in rendered)
    assert f"render: {n_ok} clips written" in result.output
    assert f"{len(files) - len(ok_files)} skipped" in result.output


BAD_CONFIGS = [
    ("select:\n  clip_seconds: -8\n", "select.clip_seconds: must be > 0"),
    ("select:\n  instruments: [piano, kazoo]\n", "select.instruments[1]: unknown instrument 'kazoo'"),
    ("render:\n  soundfont: /nonexistent/font.sf2\n",
     "render.soundfont: /nonexistent/font.sf2: SoundFont file not found"),
    ("render:\n  soundfont: no-such-font\n", "render.soundfont: no-such-font: unknown SoundFont name"),
    ("render:\n  gian: 0.5\n", "render.gian: unknown key"),
    ("seed: -1\n", "seed: must be >= 0"),
    ("controls:\n  grids: [{name: 75hz, rate: 0, frames: 600}]\n", "controls.grids[0].rate: must be > 0"),
    ("seed: 2020-01-01\n", "seed: must be an integer, got '2020-01-01'"),
    ("seed: !!binary aGVsbG8=\n", "not valid YAML (line 1): binary values are not config data"),
    ("select:\n  clip_seconds: .inf\n", "select.clip_seconds: must be a finite number, got inf"),
    ("seed: 9223372036854775808\n", "seed: must be an integer within +-2^63"),
    ("select:\n  clip_seconds: 8\n  clip_seconds: 4\n", "not valid YAML (line 3): key 'clip_seconds' given twice"),
    (BOMB, "not a config: its aliases expand it past 100000 values"),
]


@pytest.mark.parametrize("yaml_text, message", BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_bad_config_value_stops_before_any_work_with_one_line_naming_the_key(tmp_path, yaml_text, message):
    pipeline = tmp_path / "bad.yaml"
    pipeline.write_text(yaml_text)
    out = tmp_path / "out"
    result = pvtbuild("render", "--pipeline", pipeline, "--midi", EXAMPLES, "--out", out)
    assert result.exit_code == 2
    assert_no_traceback(result)
    assert result.output.strip().splitlines() == [result.output.strip()]
    named = "" if message.startswith("render.soundfont") else f"{pipeline}: "  # a SoundFont is checked after load
    assert result.output.startswith(f"pvtbuild: error: {named}{message}"), result.output
    assert not out.exists()  # nothing was started or written


@pytest.mark.parametrize("option, message", [
    (["--soundfont", "/nonexistent/font.sf3"], "render.soundfont: /nonexistent/font.sf3: SoundFont file not found"),
    (["--jobs", "0"], "exec.jobs: must be >= 1"),
    (["--midi", "/nonexistent/midi"], "/nonexistent/midi: no such MIDI folder or selection manifest"),
])
def test_bad_command_line_value_stops_before_any_work_with_one_line(tmp_path, option, message):
    out = tmp_path / "out"
    result = pvtbuild("render", "--pipeline", REPO / "pipelines" / "demo.yaml", "--out", out, *option)
    assert result.exit_code == 2
    assert_no_traceback(result)
    assert result.output.startswith(f"pvtbuild: error: {message}") and result.output.count("\n") == 1
    assert not out.exists()


def test_a_folder_where_nothing_can_be_rendered_exits_non_zero_with_the_reasons(tmp_path):
    midi = tmp_path / "midi"
    midi.mkdir()
    for name in ("jazzsoft__test-empty-file.mid", "muspy__empty.mid"):
        (midi / name).symlink_to(EDGE / name)
    result = pvtbuild("render", "--midi", midi, "--out", tmp_path / "out", "--scheduler", "sync")
    assert result.exit_code == 2
    assert_no_traceback(result)
    assert "skipped     1: empty file" in result.output and "skipped     1: no notes" in result.output
    assert result.output.rstrip().endswith("pvtbuild: error: no clip was rendered; see the skipped reasons above")


# --- the README's commands ------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--pipeline", "pipelines/pvt.yaml", "--midi", "manifests/demo.jsonl"],  # README: "rebuild exactly the clips"
    ["--pipeline", "pipelines/demo.yaml"],  # demo.yaml names the committed manifest itself
], ids=["pvt-with-manifest", "demo-yaml"])
def test_readme_render_of_the_demo_manifest_renders_every_clip_of_all_three_families(tmp_path, monkeypatch, args):
    monkeypatch.chdir(REPO)
    result = pvtbuild("render", *args, "--out", tmp_path / "out", "--scheduler", "sync")
    assert result.exit_code == 0, result.output
    assert_no_traceback(result)
    selection = rows(REPO / "manifests" / "demo.jsonl")
    rendered = rows(tmp_path / "out" / "render" / "manifest.jsonl")
    assert [r["id"] for r in rendered] == [c["clip_id"] for c in selection]
    assert all(r["status"] == "ok" for r in rendered)
    assert {r["inputs"]["instrument"] for r in rendered} == {"piano", "violin", "trumpet"}
    assert f"render: {len(selection)} clips written, 0 already done, 0 skipped" in result.output


TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")


@pytest.mark.skipif(not TIMGM.is_file(), reason="Debian's timgm6mb-soundfont is not installed")
def test_soundfont_option_takes_any_sf2_path_and_the_seed_and_limit_options_apply(tmp_path):
    args = ["--pipeline", REPO / "pipelines" / "demo.yaml", "--scheduler", "sync", "--limit", "2"]
    default = pvtbuild("render", *args, "--out", tmp_path / "gu")
    other = pvtbuild("render", *args, "--out", tmp_path / "tim", "--soundfont", TIMGM, "--seed", "3")
    assert default.exit_code == other.exit_code == 0, (default.output, other.output)
    gu, tim = (rows(tmp_path / d / "render" / "manifest.jsonl") for d in ("gu", "tim"))
    assert [r["id"] for r in gu] == [r["id"] for r in tim]  # a manifest's clips: same clips, 2 source files
    assert len({r["inputs"]["source_md5"] for r in gu}) == 2
    assert all(a["outputs"]["audio"] != b["outputs"]["audio"] for a, b in zip(gu, tim))  # another font
    recorded = json.loads((tmp_path / "tim" / "pipeline.json").read_text())
    assert recorded["render"]["soundfont"] == str(TIMGM) and recorded["seed"] == 3 and recorded["limit"] == 2


def test_select_command_rebuilds_the_committed_demo_manifest_byte_for_byte(tmp_path):
    shutil.copytree(EXAMPLES, tmp_path / "examples" / "midi")  # same layout: same relative sources
    manifest = tmp_path / "manifests" / "demo.jsonl"
    result = pvtbuild("select", "--pipeline", REPO / "pipelines" / "demo.yaml",
                      "--midi", tmp_path / "examples" / "midi",
                      "--out", tmp_path / "out", "--manifest", manifest, "--scheduler", "sync")
    assert result.exit_code == 0, result.output
    assert_no_traceback(result)
    assert manifest.read_bytes() == (REPO / "manifests" / "demo.jsonl").read_bytes()
    assert f"selection: {len(rows(manifest))} clips in " in result.output


def test_ctrl_c_mid_run_is_one_line_saying_how_to_resume_with_exit_130(tmp_path):
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "pvtbuild"), "render", "--pipeline", str(REPO / "pipelines" / "pvt.yaml"),
           "--midi", str(LAKH), "--limit", "48", "--out", str(out), "--scheduler", "sync"]
    # SIG_DFL: a test runner may start children with SIGINT ignored, as shells do for background jobs.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while not (out / "select" / "shard-00000.json").exists() and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = proc.communicate(timeout=120)  # a guard against a hang, not a speed check
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("pvtbuild: interrupted; finished shards are kept: "
                                            "rerun the same command to resume")
    assert not (out / "select" / "manifest.jsonl").exists()  # it really stopped midway


@pytest.mark.parametrize("command", [
    ["select", "--midi", EXAMPLES, "--out", "{file}/out"],
    ["select", "--midi", EXAMPLES, "--out", "{tmp}/out", "--manifest", "/proc/pvtbuild-test/sel.jsonl"],
    ["render", "--midi", EXAMPLES, "--out", "/proc/pvtbuild-test/out"],  # /proc: no file can be created there
    ["train", "--config", REPO / "pipelines" / "train" / "swissroll-edm.yaml", "--out", "{file}/run"],
])
def test_an_output_path_that_cannot_be_written_stops_before_any_work_with_one_line(tmp_path, command):
    """`select --manifest` on a read-only path once failed with a traceback after the whole select had run."""
    (tmp_path / "a-file").write_text("")
    args = [str(a).format(file=tmp_path / "a-file", tmp=tmp_path) for a in command]
    if command[0] != "train":
        args += ["--pipeline", REPO / "pipelines" / "demo.yaml", "--scheduler", "sync"]
    result = pvtbuild(*args)
    assert result.exit_code == 2
    assert_no_traceback(result)
    assert result.output.count("\n") == 1
    assert re.match(r"pvtbuild: error: --(out|manifest) \S+: (\S+ is a file, not a folder|cannot write in /proc)",
                    result.output), result.output
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]  # nothing was started or written
