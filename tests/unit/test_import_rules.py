"""Import rules of the design: algorithms/, rewards/ and types.py stay pure (no transformers, no
torch.distributed, nothing from training/); only training/distributed.py may touch process groups."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "reinforced"
PURE = [*sorted((SRC / "algorithms").glob("*.py")), *sorted((SRC / "rewards").glob("*.py")), SRC / "types.py"]
FORBIDDEN = ("transformers", "torch.distributed", "reinforced.training", "reinforced.models", "reinforced.rollout")


def module_level_imports(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text()).body:  # module level only: lazy imports inside functions are allowed
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(SRC)))
def test_pure_modules_import_nothing_heavy(path):
    bad = [n for n in module_level_imports(path) if n.startswith(FORBIDDEN)]
    assert not bad, f"{path.name} imports {bad}"


def test_importing_algorithms_and_rewards_does_not_load_transformers():
    code = ("import sys, reinforced.algorithms, reinforced.rewards, reinforced.types; "
            "print(sorted(m for m in sys.modules if m.startswith(('transformers', 'torch.distributed.fsdp'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_only_distributed_module_touches_process_groups():
    offenders = [p for p in SRC.rglob("*.py") if p.name != "distributed.py"
                 and any(n.startswith("torch.distributed") for n in module_level_imports(p))]
    assert not offenders
