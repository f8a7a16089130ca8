"""The lint step's import check finds cycles and test helpers in production code."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import check_imports  # noqa: E402


def test_a_cycle_is_found_and_a_chain_is_not():
    assert check_imports.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"]]
    assert check_imports.cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_only_top_level_imports_count_and_relative_ones_resolve():
    tree = ast.parse("from . import b\nfrom .c import x\nimport d\n"
                     "def f():\n    import e\n")
    found = check_imports.imported(tree, "pkg.a", is_package=False)
    assert {"pkg.b", "pkg.c", "pkg.c.x", "d"} <= found and "e" not in found


def test_the_tree_passes(capsys):
    assert check_imports.main() == 0
    assert "no cycle" in capsys.readouterr().out



def test_a_folder_over_its_share_is_a_problem(tmp_path, monkeypatch, capsys):
    package = tmp_path / check_imports.PACKAGE
    (package / "big").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "small.py").write_text("x = 1\n")
    (package / "big" / "__init__.py").write_text("".join(f"x{i} = {i}\n" for i in range(9)))
    monkeypatch.setattr(check_imports, "ROOT", tmp_path)
    assert check_imports.main() == 1
    assert "towerrec/big holds 90% of the code" in capsys.readouterr().err


def test_a_late_import_of_a_test_helper_is_found():
    tree = ast.parse("import os\ndef f():\n    from towerrec.testing import tiny_bert\n"
                     "    import tests.conftest\n")
    assert check_imports.test_helpers_imported(tree) == {"towerrec.testing", "tests.conftest"}
