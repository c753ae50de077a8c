"""Tests of pvtbuild.config: control grids derived from the clip and the format they serve,
hand-given counts checked at load, and every committed pipeline still loading."""

from __future__ import annotations

import json

import pytest
import yaml

from paths import REPO
from pvtbuild.config import PipelineConfig, config_from_dict, load_pipeline
from pvtbuild.errors import ConfigError

# pipelines/pvt.yaml's grids as they were written before grids followed the clip
HAND_GRIDS = {"grids": [{"name": "75hz", "rate": 75, "frames": 600}, {"name": "240hz", "rate": 240, "frames": 1921}]}


def grids(cfg: PipelineConfig) -> dict[str, tuple[float, int, str | None, float]]:
    return {g.name: (g.rate, g.frames, g.serves, g.offset) for g in cfg.controls.grids}


def test_grids_serving_a_format_follow_the_clip_length():
    assert grids(PipelineConfig()) == {"75hz": (75.0, 600, "encodec", 0.5), "240hz": (240.0, 1921, "cqt", 0.0)}
    four = config_from_dict({"select": {"clip_seconds": 4}})
    assert grids(four) == {"75hz": (75.0, 300, "encodec", 0.5), "240hz": (240.0, 961, "cqt", 0.0)}
    odd = config_from_dict({"select": {"clip_seconds": 2.5}, "render": {"sample_rate": 16000},
                            "encode": {"cqt": {"hop_length": 64}}})
    # EnCodec: ceil(40000 / 320) frames at 16000/320 Hz; CQT: 40000 // 64 + 1 centred frames
    assert grids(odd) == {"75hz": (50.0, 125, "encodec", 0.5), "240hz": (250.0, 626, "cqt", 0.0)}


def test_the_committed_pipelines_derive_their_grids_and_give_the_spec_counts():
    # proof.yaml, proof-gpu.yaml: 2 s and 8 s clips, a CQT hop of 400 (bench_controllability's coarse CQT)
    special = {"proof.yaml": {"60hz": (60.0, 121, "cqt", 0.0)}, "proof-gpu.yaml": {"60hz": (60.0, 481, "cqt", 0.0)}}
    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        cfg = load_pipeline(path)
        want = special.get(path.name, {"75hz": (75.0, 600, "encodec", 0.5), "240hz": (240.0, 1921, "cqt", 0.0)})
        assert grids(cfg) == want, path.name


def test_a_hand_given_frame_count_the_clip_does_not_have_is_one_line_naming_the_key(tmp_path):
    pipeline = tmp_path / "four.yaml"
    pipeline.write_text(yaml.safe_dump({"select": {"clip_seconds": 4}, "controls": HAND_GRIDS}))
    with pytest.raises(ConfigError) as e:
        load_pipeline(pipeline)
    msg = str(e.value)
    assert msg.startswith(f"{pipeline}: controls.grids[0].frames: 600, but EnCodec has 300 frames") and "\n" not in msg
    with pytest.raises(ConfigError,
                       match=r"^controls\.grids\[1\]\.frames: 1921, but the centred CQT \(hop 100\) has 961"):
        config_from_dict({"select": {"clip_seconds": 4},
                          "controls": {"grids": [{"name": "75hz", "serves": "encodec"},
                                                 {"name": "240hz", "serves": "cqt", "frames": 1921}]}})
    with pytest.raises(ConfigError, match=r"^controls\.grids\[0\]\.rate: 100, but EnCodec"):
        config_from_dict({"controls": {"grids": [{"name": "75hz", "serves": "encodec", "rate": 100},
                                                 {"name": "240hz", "serves": "cqt"}]}})


def test_grids_listed_by_hand_in_older_configs_load_and_serve_what_they_are_stored_beside():
    cfg = config_from_dict({"controls": HAND_GRIDS})
    # the 240 Hz grid stored beside the CQT is now sampled at the CQT's frame centres
    assert grids(cfg) == {"75hz": (75.0, 600, "encodec", 0.5), "240hz": (240.0, 1921, "cqt", 0.0)}


def test_a_recorded_config_loads_back_to_the_same_config(tmp_path):
    cfg = config_from_dict({"select": {"clip_seconds": 4}})
    again = config_from_dict(json.loads(json.dumps(cfg.to_dict())))  # as pipeline.json / dataset.json hold it
    assert again == cfg


def test_a_grid_stored_beside_a_format_it_does_not_serve_is_refused():
    with pytest.raises(ConfigError, match=r"^shard\.control_grids\.cqt: grid '75hz' serves encodec, not cqt"):
        config_from_dict({"shard": {"formats": ["cqt"], "control_grids": {"cqt": "75hz"}}})
    with pytest.raises(ConfigError, match=r"^shard\.control_grids: stores grid 'g' beside both cqt and encodec/disc"):
        config_from_dict({"controls": {"grids": [{"name": "g", "rate": 240, "frames": 1921}]},
                          "shard": {"control_grids": {"audio": "g", "cqt": "g", "encodec": "g", "disc": "g"}}})


def test_a_free_grid_samples_frame_centres_within_the_clip():
    cfg = config_from_dict({"select": {"clip_seconds": 4},
                            "controls": {"grids": [{"name": "75hz", "serves": "encodec"},
                                                   {"name": "240hz", "serves": "cqt"},
                                                   {"name": "100hz", "rate": 100},
                                                   {"name": "50hz", "rate": 50, "offset": 0.0}]}})
    g = grids(cfg)
    assert g["100hz"] == (100.0, 400, None, 0.5)  # (k + 1/2)/100 for k < 400 lies within [0, 4]
    assert g["50hz"] == (50.0, 201, None, 0.0)  # k/50 for k <= 200
    with pytest.raises(ConfigError,
                       match=r"^controls\.grids\[0\]\.rate: must be given for a grid that serves no format"):
        config_from_dict({"controls": {"grids": [{"name": "x", "frames": 10}]},
                          "shard": {"formats": ["audio"], "control_grids": {"audio": "x"}}})
    with pytest.raises(ConfigError, match=r"^controls\.grids\[0\]\.frames: 800, but a 100 Hz grid"):
        config_from_dict({"select": {"clip_seconds": 4},
                          "controls": {"grids": [{"name": "x", "rate": 100, "frames": 800}]},
                          "shard": {"formats": ["audio"], "control_grids": {"audio": "x"}}})


@pytest.mark.parametrize("key, value, message", [
    ("render.silence_rms", -0.1, "must be within [0, 1), got -0.1"),
    ("render.silence_rms", 1.0, "must be within [0, 1), got 1.0"),
    ("render.voices", 0, "must be within 1..65535, got 0"),
    ("exec.select_files_per_task", 0, "must be >= 1, got 0"),
    ("exec.wait_for_workers", -1, "must be >= 0, got -1"),
])
def test_silence_rms_voices_and_select_files_per_task_are_checked_at_load_naming_the_key(key, value, message):
    section, leaf = key.split(".")
    with pytest.raises(ConfigError) as e:
        config_from_dict({section: {leaf: value}})
    assert str(e.value) == f"{key}: {message}"


def test_pvt_yaml_spells_out_the_render_and_select_numbers_code_reads():
    spelled = yaml.safe_load((REPO / "pipelines" / "pvt.yaml").read_text())
    assert {k: spelled["render"][k] for k in ("silence_rms", "voices")} == {"silence_rms": 1e-4, "voices": 64}
    assert spelled["exec"]["select_files_per_task"] == 16
    cfg = load_pipeline(REPO / "pipelines" / "pvt.yaml")
    assert (cfg.render.silence_rms, cfg.render.voices, cfg.exec.select_files_per_task) == (1e-4, 64, 16)
