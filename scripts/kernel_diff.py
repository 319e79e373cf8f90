"""Which kernels a change touches: each kernel's code at a git commit against this tree's, or in two built libraries.

    python3 scripts/kernel_diff.py REF [FILE.cu ...] [--sass] [--alias PATTERN=REPLACEMENT ...] [--all]
    python3 scripts/kernel_diff.py --libs OLD.so NEW.so [--alias ...] [--all]

REF form: the plugins/kernels sources that differ from REF (every .cu where a header does), or the FILEs named,
compiled for sm_90a at REF and here, and compared kernel by kernel as PTX, or with --sass as machine code. --libs
compares the machine code of two built kernel libraries (an A/B's candidate and baseline). Machine code needs
cuobjdump, on PATH or in $CUOBJDUMP (the `nvidia-cuda-cuobjdump` wheel has one).

Names and registers are compared without their spelling: the anonymous namespace's hash, register numbers and
labels are dropped. nvcc derives that hash from the source's absolute path and its code can change with it (a
PTX hint here and there), so both sides of REF form compile at one temporary path. PTX can differ where machine
code does not (ptxas merges four scalar stores into one vector store), so a PTX difference is worth a --sass look.
--alias rewrites this side's kernel names and code (a Python regular expression) before comparing: a kernel that
gained a template parameter, `--alias 'dt4_kernelI(\\w+?)Li1EEEv=dt4_kernelI\\1EEv'`, is then compared with its
old self.

Prints a line for each kernel that differs, is gone or is new (--all: every kernel) and a count; exits 1 when a
kernel of the old side differs or is gone, 2 on a usage, git or compiler error (one line on stderr).
"""
from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNELS = pathlib.Path("plugins/kernels")
NVCC_FLAGS = ["-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-DMD_WGMMA_BUILT"]
ANON_NAMESPACE = re.compile(r"\d+_GLOBAL__N__[0-9a-f]{8}_\d+_\w+?_cu_[0-9a-f]{8}")
PTX_ENTRY = re.compile(r"\.entry (\w+)\(.*?\n\}\n", re.S)
PTX_REGISTER = re.compile(r"%(rd|rs|r|fd|f|p|h|hh)\d+")
PTX_LABEL = re.compile(r"\$L__BB\d+_\d+")
SASS_FUNCTION = re.compile(r"\n\s*Function : (\S+)\n")
SASS_OFFSET = re.compile(r"/\*[0-9a-f]{4}\*/")


class ToolError(Exception):
    """A usage, git or compiler error: one line on stderr, exit 2."""


def canonical_name(text: str) -> str:
    return ANON_NAMESPACE.sub("G", text)


def ptx_kernels(ptx: str) -> dict[str, str]:
    """PTX text -> {kernel: body}, registers renumbered in order of first use, labels and .reg lines dropped."""
    kernels = {}
    for match in PTX_ENTRY.finditer(ptx):
        numbers: dict[str, str] = {}

        def renumber(reg: re.Match) -> str:
            return numbers.setdefault(reg.group(0), f"%{reg.group(1)}#{len(numbers)}")
        lines = [line for line in match.group(0).splitlines() if not line.strip().startswith(".reg")]
        kernels[canonical_name(match.group(1))] = PTX_LABEL.sub("L", PTX_REGISTER.sub(renumber,
                                                                                      canonical_name("\n".join(lines))))
    return kernels


def sass_kernels(sass: str) -> dict[str, str]:
    """cuobjdump -sass text -> {kernel: its instructions, one a line, without offsets and encodings}."""
    parts = SASS_FUNCTION.split(sass)
    kernels = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        lines = [SASS_OFFSET.sub("", line).split(";")[0].strip() for line in body.splitlines()
                 if SASS_OFFSET.search(line)]
        kernels[canonical_name(name)] = canonical_name("\n".join(lines))
    return kernels


def run_tool(cmd: list[str], what: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        raise ToolError(f"{what}: {err.strerror}: {cmd[0]}") from None
    if done.returncode != 0:
        raise ToolError(f"{what}: {(done.stderr.strip().splitlines() or ['exit %d' % done.returncode])[-1]}")
    return done.stdout


def cuobjdump() -> str:
    tool = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump")
    if not tool:
        raise ToolError("machine code needs cuobjdump on PATH or in $CUOBJDUMP (the nvidia-cuda-cuobjdump wheel)")
    return tool


def library_kernels(lib: pathlib.Path) -> dict[str, str]:
    if not lib.is_file():
        raise ToolError(f"{lib}: no such file")
    return sass_kernels(run_tool([cuobjdump(), "-sass", str(lib)], f"cuobjdump on {lib.name}"))


def source_kernels(source: pathlib.Path, out_dir: pathlib.Path, sass: bool) -> dict[str, str]:
    """Compile one .cu (its folder on the include path) and return its kernels' code."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (source.stem + (".cubin" if sass else ".ptx"))
    run_tool([os.environ.get("NVCC", "nvcc"), *NVCC_FLAGS, "-I", str(source.parent), "-cubin" if sass else "-ptx",
              str(source), "-o", str(out)], f"nvcc on {source.name}")
    if not sass:
        return ptx_kernels(out.read_text())
    return sass_kernels(run_tool([cuobjdump(), "-sass", str(out)], f"cuobjdump on {out.name}"))


def compare(old: dict[str, str], new: dict[str, str], aliases: list[tuple[re.Pattern, str]]) -> list[tuple[str, str]]:
    """[(verdict, kernel)]: same or differs (on both sides), gone (only old), new (only new, after the aliases)."""
    renamed = {}
    for name, code in new.items():
        for pattern, replacement in aliases:
            name, code = pattern.sub(replacement, name), pattern.sub(replacement, code)
        renamed[name] = code
    rows = [("same" if renamed.get(name) == code else "differs" if name in renamed else "gone", name)
            for name, code in old.items()]
    return rows + [("new", name) for name in renamed if name not in old]


def git(repo: pathlib.Path, *args: str) -> str:
    return run_tool(["git", "-C", str(repo), *args], "git " + args[0])


def kernel_path(source: str) -> pathlib.Path:
    """A source named from the repository root (plugins/kernels/x.cu) or by its file name (x.cu)."""
    rel = pathlib.Path(source) if "/" in source else KERNELS / source
    if rel.parent != KERNELS or rel.suffix != ".cu":
        raise ToolError(f"{source}: not a .cu file of {KERNELS}")
    return rel


def sources_to_compare(repo: pathlib.Path, ref: str, files: list[str]) -> list[pathlib.Path]:
    if files:
        return [kernel_path(f) for f in files]
    changed = git(repo, "diff", "--name-only", ref, "--", str(KERNELS)).split()
    sources = {pathlib.Path(name) for name in changed if name.endswith(".cu")}  # a deleted one too
    if len(sources) < len(changed):  # a header: any source may compile differently
        sources |= {p.relative_to(repo) for p in (repo / KERNELS).glob("*.cu")}
    return sorted(sources)


def extract_kernels(repo: pathlib.Path, ref: str, tree: pathlib.Path) -> None:
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref, str(KERNELS)], capture_output=True)
    if archive.returncode != 0:
        raise ToolError(f"{ref} has no {KERNELS}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)


def ref_rows(repo: pathlib.Path, ref: str, files: list[str], sass: bool, aliases) -> list[tuple[str, str]]:
    """Both sides compiled at one temporary path (nvcc's anonymous-namespace hash follows the path)."""
    try:
        git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except ToolError:
        raise ToolError(f"{ref}: not a commit of {repo}") from None
    sources = sources_to_compare(repo, ref, files)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tree, out = pathlib.Path(tmp, "src"), pathlib.Path(tmp, "out")
        kernels = {}
        for side in ("old", "new"):
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir()
            if side == "old":
                extract_kernels(repo, ref, tree)
            else:
                shutil.copytree(repo / KERNELS, tree / KERNELS)
            kernels[side] = {rel: source_kernels(tree / rel, out / side, sass) if (tree / rel).exists() else {}
                             for rel in sources}
        for rel in sources:
            rows += [(verdict, f"{rel.name}  {name}")
                     for verdict, name in compare(kernels["old"][rel], kernels["new"][rel], aliases)]
    return rows


def parse_alias(text: str) -> tuple[re.Pattern, str]:
    pattern, sep, replacement = text.partition("=")
    try:
        if not sep or not pattern:
            raise ValueError("wants PATTERN=REPLACEMENT")
        return re.compile(pattern), replacement
    except (ValueError, re.error) as err:
        raise argparse.ArgumentTypeError(f"--alias {text!r}: {err}") from None


def report(rows: list[tuple[str, str]], every: bool) -> int:
    for verdict, name in rows:
        if every or verdict != "same":
            print(f"{verdict:8} {name}")
    counts = collections.Counter(verdict for verdict, _ in rows)
    print(", ".join(f"{counts[v]} {v}" for v in ("same", "differs", "gone", "new")))
    return int(counts["differs"] + counts["gone"] > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", nargs="?", help="the commit to compare this tree's kernels with")
    parser.add_argument("files", nargs="*", help=f"sources of {KERNELS} (default: those that differ from REF)")
    parser.add_argument("--libs", nargs=2, type=pathlib.Path, metavar=("OLD", "NEW"), help="two built libraries")
    parser.add_argument("--sass", action="store_true", help="machine code, not PTX (needs cuobjdump)")
    parser.add_argument("--alias", type=parse_alias, action="append", default=[], metavar="PATTERN=REPLACEMENT")
    parser.add_argument("--all", action="store_true", help="a line for every kernel, the same ones too")
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.libs is None) == (args.ref is None) or (args.libs and args.files):
        parser.error("give REF [FILE ...] or --libs OLD NEW")
    try:
        if args.libs:
            rows = compare(library_kernels(args.libs[0]), library_kernels(args.libs[1]), args.alias)
        else:
            rows = ref_rows(args.repo, args.ref, args.files, args.sass, args.alias)
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return report(rows, args.all)


if __name__ == "__main__":
    sys.exit(main())
