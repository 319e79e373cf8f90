"""Imports only go down the layers of docs/architecture.md "Layers": a module never imports one of a higher layer."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mamba_deploy"

# Top first. A module's layer is that of its longest listed prefix; the package face (__init__) is exempt.
LAYERS = [
    ["cli"],
    ["serve"],
    ["verify", "bench", "bench_cpu", "inspect_export", "triton_repo"],
    ["runtime"],
    ["native", "tensorrt"],
    ["export"],
    ["checkpoint", "random_init", "roofline"],
    ["models"],
    ["config", "config_hf", "config_hybrid", "config_nemotron"],
    ["ops"],
    ["errors", "version"],
]
RANK = {name: len(LAYERS) - i for i, names in enumerate(LAYERS) for name in names}
SIBLINGS_APART = [{"native", "tensorrt"}, {"verify", "bench", "bench_cpu", "inspect_export", "triton_repo"},
                  {"checkpoint", "random_init"}]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top(module: str) -> str:
    return module.split(".")[0]


def imported_modules(path: pathlib.Path) -> set[str]:
    """Package-relative names of the mamba_deploy modules `path` imports (function-level imports too)."""
    here = module_name(path).split(".") if path.name != "__init__.py" else module_name(path).split(".") + ["_"]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("mamba_deploy."):
                target = node.module.removeprefix("mamba_deploy.")
            else:
                continue
            names = [target] if node.module else [f"{target}.{a.name}".strip(".") for a in node.names]
            out.update(n for n in names if n)
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("mamba_deploy.") for a in node.names if a.name.startswith("mamba_deploy."))
    return out


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        if not source:  # the package face
            continue
        for target in imported_modules(path):
            a, b = top(source), top(target)
            if a == b or b not in RANK:
                continue
            if RANK[b] > RANK[a] or any({a, b} <= group for group in SIBLINGS_APART):
                found.append(f"{source} imports {target}")
    return found


def test_every_package_module_has_a_layer():
    tops = {top(module_name(p)) for p in PACKAGE.rglob("*.py") if module_name(p)} - {"_lib"}
    assert tops <= set(RANK), f"modules without a layer: {sorted(tops - set(RANK))}"


def test_no_module_imports_a_higher_layer():
    assert violations() == []


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: an ops module importing the runtime is reported."""
    fake = tmp_path / "mamba_deploy"
    (fake / "ops").mkdir(parents=True)
    (fake / "ops" / "bad.py").write_text("from ..runtime import Engine\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert violations() == ["ops.bad imports runtime"]
