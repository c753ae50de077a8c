"""The repository's own structure: README's module map matches the package, and its imports have no cycle."""

from __future__ import annotations

import sys

from paths import REPO

sys.path.insert(0, str(REPO / "scripts"))  # check_imports.py is a script, not part of the package

import check_imports  # noqa: E402  (after the sys.path line above)

MAP_MARKER = "<!-- module map: one line per package and module of src/pvtbuild -->"


def readme_map() -> list[str]:
    """The first word of each line of README's module map (the code block after its marker)."""
    text = (REPO / "README.md").read_text()
    block = text.split(MAP_MARKER, 1)[1].split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line.strip()]


def package_entries() -> list[str]:
    """Every package (as `pvtbuild/x/`) and module (`pvtbuild/x/y.py`) of src/pvtbuild, but `__main__`s."""
    src = REPO / "src"
    out = []
    for path in sorted((src / "pvtbuild").rglob("*.py")):
        rel = path.relative_to(src)
        if path.name == "__init__.py":
            out.append(f"{rel.parent}/")
        elif path.name != "__main__.py":
            out.append(str(rel))
    return out


def test_readme_module_map_lists_every_module_once_and_nothing_else():
    listed = readme_map()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(listed) == sorted(package_entries())


def test_no_import_cycle_and_no_private_name_imported_across_modules():
    assert check_imports.problems() == []


def test_the_import_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pvtbuild"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pvtbuild.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pvtbuild.a import _g\n")
    found = check_imports.problems(tmp_path)
    assert "import cycle: pvtbuild.a -> pvtbuild.b" in found
    assert any("imports private `_g` from pvtbuild.a" in line for line in found)
