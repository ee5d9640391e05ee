"""The README's two commands are the ones CI and users run."""
from __future__ import annotations

import re

from conftest import ROOT


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2
    test_cmd = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_readme_main_command_uses_a_shipped_recipe():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    main = next(b for b in blocks if "edgevit compress" in b)
    recipe = re.search(r"--recipe (\S+)", main).group(1)
    assert (ROOT / recipe).is_file()
    assert "-c constraints.txt" in main
    assert "torch==2.14.1" in (ROOT / "constraints.txt").read_text()
