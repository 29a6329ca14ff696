"""The layering rules of STYLE.md, checked by parsing every import."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def imports(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path}: {name}" for path, names in imports(package).items() for name in names
            if name.split(".")[0] in forbidden or name.startswith(forbidden)]


def test_core_has_no_async_or_front_end_imports():
    assert offenders("vfsd/store", ("trio", "pyfuse3", "aiohttp", "vfsd.fs", "gateway",
                                    "vfsd.cli", "tqdm")) == []


def test_only_the_core_imports_lmdb():
    for package in ("vfsd/fs", "gateway"):
        assert offenders(package, ("lmdb",)) == []
    others = [p for p, names in imports("vfsd").items()
              if "lmdb" in names and not p.startswith("vfsd/store/")]
    assert others == []


def test_gateway_never_imports_the_mount():
    assert offenders("gateway", ("vfsd.fs", "pyfuse3", "trio")) == []


def test_test_modules_have_unique_names():
    """pytest imports test modules by basename (no packages under tests/): two files with one
    name in different directories stop the whole run at collection."""
    names = [p.name for p in (ROOT / "tests").rglob("*.py") if p.name != "conftest.py"]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_test_modules_have_unique_basenames():
    """The test directories are not packages, so pytest imports each module by its basename:
    two with one basename fail the whole run at collection."""
    seen: dict[str, str] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        where = str(path.relative_to(ROOT))
        if path.name in seen:
            clashes.append(f"{seen[path.name]} and {where}")
        seen.setdefault(path.name, where)
    assert clashes == []
