"""The package's shape: no import cycles, long modules say why, a plain install suffices."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ray_rewards"
ROOT = PACKAGE.parent
MAX_LINES = 500


def module_files() -> dict[str, pathlib.Path]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imported_modules(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its file (lazy imports
    count; ``if TYPE_CHECKING:`` blocks do not), as the most specific known module.
    """
    tree = ast.parse(path.read_text())
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # The package root and a module's own parents are not dependencies.
            if target and target != "ray_rewards" and not name.startswith(target):
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules():
    files = module_files()
    graph = {name: imported_modules(name, path, set(files)) for name, path in files.items()}
    assert len(graph) > 10 and any(graph.values())
    assert cycles(graph) == []


def test_long_modules_give_their_reason_at_the_top():
    long_without_reason = []
    for name, path in module_files().items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES and "reason for its length" not in text[:1200].lower():
            long_without_reason.append(f"{name} ({text.count(chr(10))} lines)")
    assert long_without_reason == []


REFUSE_PILLOW = textwrap.dedent(
    """
    import sys

    class RefusePillow:
        def find_spec(self, name, path=None, target=None):
            if name == "PIL" or name.startswith("PIL."):
                raise ImportError("Pillow is not installed (refused by the test)")
            return None

    sys.meta_path.insert(0, RefusePillow())
    """
)


def run_without_pillow(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", REFUSE_PILLOW + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_pillow_block_catches_importing_every_rllib_algorithm():
    # The mechanism the next test relies on: RLlib's trainable registry imports
    # DreamerV3, which needs Pillow.
    proc = run_without_pillow(
        """
        from ray.tune.registry import get_trainable_cls
        get_trainable_cls("PPO")
        """
    )
    assert proc.returncode != 0
    assert "Pillow is not installed" in proc.stderr


@pytest.mark.parametrize("config", ["cluster/jobs/rllib.yaml", "cluster/local/jobs/rllib.yaml"])
def test_rllib_job_and_restore_by_name_need_no_pillow(config):
    proc = run_without_pillow(
        f"""
        from ray_rewards.jobs import algorithm_config, load_config
        from ray_rewards.rllib import learned_reward_algorithm_class

        cfg = load_config({config!r}, "rllib")
        print(type(algorithm_config(cfg.settings)).__name__)
        print(learned_reward_algorithm_class("SAC").__name__)
        assert "PIL" not in sys.modules
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["PPOConfig", "SACWithLearnedReward"]
