"""soundfont-audit: real FluidSynth on GeneralUser GS and a Debian SoundFont; copies detuned or silenced at
test time."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pvtbuild.cli import cli
from pvtbuild.tools.audit import audit_soundfont, note_f0

REPO = Path(__file__).resolve().parents[2]
GENERALUSER = REPO / "soundfonts" / "GeneralUser-GS-v1.471.sf2"
DEBIAN = [p for p in (Path("/usr/share/sounds/sf2/TimGM6mb.sf2"), Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"))
          if p.is_file()]
FEW = dict(programs=(0, 56), pitch_min=60, pitch_max=61)  # 2 programs x 2 pitches x 3 velocities


def _chunk(data: bytes | bytearray, start: int, end: int, wanted: bytes) -> tuple[int, int]:
    """(offset of the data, size) of the first chunk `wanted` (a RIFF id, or a LIST's type) in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        cid, size = bytes(data[pos:pos + 4]), struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == wanted or (cid == b"LIST" and bytes(data[pos + 8:pos + 12]) == wanted):
            return (pos + 12, size - 4) if cid == b"LIST" else (pos + 8, size)
        pos += 8 + size + (size & 1)
    raise AssertionError(f"no {wanted!r} chunk")


def patched_copy(src: Path, dst: Path, *, cents: int = 0, silent: bool = False) -> Path:
    """A copy of an sf2 with every sample's pitch correction moved by `cents`, or its sample data zeroed."""
    data = bytearray(src.read_bytes())
    assert data[:4] == b"RIFF" and data[8:12] == b"sfbk"
    top = 8 + struct.unpack("<I", data[4:8])[0]
    if silent:
        sdta, size = _chunk(data, 12, top, b"sdta")
        smpl, n = _chunk(data, sdta, sdta + size, b"smpl")
        data[smpl:smpl + n] = bytes(n)
    if cents:
        pdta, size = _chunk(data, 12, top, b"pdta")
        shdr, n = _chunk(data, pdta, pdta + size, b"shdr")
        for rec in range(shdr, shdr + n - 46, 46):  # 46-byte sample headers; the last is the terminal EOS
            old = struct.unpack_from("<b", data, rec + 41)[0]  # name 20, 5 x u32, originalPitch u8, pitchCorrection i8
            struct.pack_into("<b", data, rec + 41, old + cents if old + cents <= 99 else old - cents)
    dst.write_bytes(bytes(data))
    return dst


def test_audit_passes_generaluser_gs():
    report = audit_soundfont(GENERALUSER, **FEW)
    assert report.ok, "\n".join(report.lines())
    assert len(report.notes) == 12
    assert all(abs(n.cents) < 30 and n.peak > 1e-3 and n.latency_s < 0.05 for n in report.notes)
    for prog in (0, 56):  # loudness rises with velocity
        db = [n.loudness_db for n in report.notes if n.program == prog and n.pitch == 60]
        assert db == sorted(db) and db[-1] - db[0] > 6


@pytest.mark.skipif(not DEBIAN, reason="no Debian SoundFont (make setup installs timgm6mb-soundfont)")
def test_audit_passes_a_debian_soundfont():
    result = CliRunner().invoke(cli, ["soundfont-audit", str(DEBIAN[0]), "--programs", "0,56", "--pitch-min", "60",
                                      "--pitch-max", "61"])
    assert result.exit_code == 0, result.output
    assert "12/12 notes pass" in result.output


def test_audit_fails_a_detuned_soundfont_with_reason_detuned(tmp_path):
    bad = patched_copy(GENERALUSER, tmp_path / "detuned.sf2", cents=50)
    report = audit_soundfont(bad, **FEW)
    assert not report.ok
    assert {r for n in report.notes for r in n.reasons} == {"detuned"}
    clean = audit_soundfont(GENERALUSER, **FEW)
    assert [abs(b.cents - a.cents) for a, b in zip(clean.notes, report.notes)] == pytest.approx([50] * 12, abs=2)
    result = CliRunner().invoke(cli, ["soundfont-audit", str(bad), "--programs", "0", "--pitch-min", "60",
                                      "--pitch-max", "60"])
    assert result.exit_code != 0
    assert "FAIL: detuned" in result.output and "notes fail the audit" in result.output


def test_audit_fails_a_silent_soundfont_with_reason_silent(tmp_path):
    bad = patched_copy(GENERALUSER, tmp_path / "silent.sf2", silent=True)
    report = audit_soundfont(bad, programs=(40,), pitch_min=60, pitch_max=60)
    assert [n.reasons for n in report.notes] == [["silent"]] * 3


@pytest.mark.parametrize("name, message", [("missing.sf2", "SoundFont file not found"),
                                           ("junk.sf2", "not a SoundFont (no RIFF sfbk header)")])
def test_audit_one_line_errors_for_a_missing_or_bad_file(tmp_path, name, message):
    (tmp_path / "junk.sf2").write_bytes(b"not a soundfont at all")
    result = CliRunner().invoke(cli, ["soundfont-audit", str(tmp_path / name)])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1


def test_note_f0_is_precise_on_a_synthetic_note():
    sr = 24000
    t = np.arange(int(0.4 * sr)) / sr
    f = 440.0 * 2 ** ((57.13 - 69) / 12)  # 13 cents sharp of A3
    x = sum(np.sin(2 * np.pi * h * f * t) / h for h in range(1, 8))
    assert note_f0(x, sr, 57) == pytest.approx(57.13, abs=0.02)
