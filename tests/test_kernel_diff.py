"""scripts/kernel_diff.py: kernels parsed from PTX and cuobjdump text without register and namespace spellings,
and, where nvcc is (CI has it), a commit's kernels against a changed tree's in a small repository."""
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import kernel_diff as K  # noqa: E402

NS = "_ZN2md43_GLOBAL__N__3fa94c3b_10_example_cu_b9be9e4c"


def ptx_entry(name: str, regs: tuple[int, int]) -> str:
    a, b = regs
    return (f".visible .entry {name}(\n\t.param .u64 p\n)\n{{\n\t.reg .f32 \t%f<{b + 1}>;\n"
            f"\tld.param.f32 \t%f{a}, [p];\n\tadd.f32 \t%f{b}, %f{a}, %f{a};\n\t@%p1 bra \t$L__BB0_2;\n\tret;\n}}\n")


def test_ptx_kernels_drop_register_numbers_labels_and_the_namespace_hash():
    old = K.ptx_kernels(ptx_entry(f"{NS}3addEv", (1, 2)))
    new = K.ptx_kernels(ptx_entry(f"{NS.replace('3fa94c3b', '595c1d17')}3addEv", (7, 9)).replace("BB0_2", "BB4_2"))
    assert list(old) == ["_ZN2mdG3addEv"] and old == new
    changed = K.ptx_kernels(ptx_entry(f"{NS}3addEv", (1, 2)).replace("add.f32", "mul.f32"))
    assert changed != old


def test_sass_kernels_keep_instructions_without_offsets():
    text = ("\n\tcode for sm_90a\n\t\tFunction : " + NS + "3addEv\n"
            "        /*0000*/                   LDC R1, c[0x0][0x28] ;        /* 0x00000a00ff017b82 */\n"
            "        /*0010*/                   FADD R2, R1, R1 ;           /* 0x0000000101027221 */\n"
            "\t\t..........\n\n\n\t\tFunction : _Z3mulv\n"
            "        /*0000*/                   EXIT ;                        /* 0x000000000000794d */\n")
    kernels = K.sass_kernels(text)
    assert kernels == {"_ZN2mdG3addEv": "LDC R1, c[0x0][0x28]\nFADD R2, R1, R1", "_Z3mulv": "EXIT"}


def test_compare_verdicts_and_an_alias_for_a_new_template_parameter():
    old = {"kI1fEv": "a", "gI1fEv": "b", "hv": "c"}
    new = {"kI1fLi1EEv": "a", "gI1fEv": "B", "nv": "d"}
    assert sorted(K.compare(old, new, [])) == [
        ("differs", "gI1fEv"), ("gone", "hv"), ("gone", "kI1fEv"), ("new", "kI1fLi1EEv"), ("new", "nv")]
    alias = K.parse_alias(r"kI(\w+?)Li1EEv=kI\1Ev")
    assert ("same", "kI1fEv") in K.compare(old, new, [alias])


KERNELS = """namespace {
__global__ void twice(float* x) { x[threadIdx.x] *= 2.f; }
template <int N> __global__ void plus(float* x) { x[threadIdx.x] += N; }
}
void launch(float* x) { twice<<<1, 32>>>(x); plus<3><<<1, 32>>>(x); }
"""


def repo_with_kernels(tmp_path: pathlib.Path) -> pathlib.Path:
    src = tmp_path / "plugins" / "kernels"
    src.mkdir(parents=True)
    (src / "k.cu").write_text(KERNELS)
    (src / "notes.txt").write_text("not a source\n")
    for cmd in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "k"]):
        subprocess.run(["git", "-C", str(tmp_path), *cmd], check=True)
    return tmp_path


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_a_commit_against_the_tree_names_the_changed_kernel(tmp_path, capsys):
    repo = repo_with_kernels(tmp_path)
    source = repo / "plugins" / "kernels" / "k.cu"
    source.write_text("// a comment changes no kernel\n" + KERNELS.replace("*= 2.f", "*= 3.f"))
    assert K.main(["HEAD", "--repo", str(repo)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "1 same, 1 differs, 0 gone, 0 new" and "twice" in out[0] and out[0].startswith("differs")

    source.write_text(KERNELS.replace("template <int N>", "template <int N, int M = 1>"))
    assert K.main(["HEAD", "k.cu", "--repo", str(repo)]) == 1  # the new template argument renames the kernel
    assert capsys.readouterr().out.splitlines()[-1] == "1 same, 0 differs, 1 gone, 1 new"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_an_alias_pairs_a_renamed_kernel_with_its_old_self(tmp_path, capsys):
    repo = repo_with_kernels(tmp_path)
    (repo / "plugins" / "kernels" / "k.cu").write_text(
        KERNELS.replace("template <int N>", "template <int N, int M>").replace("plus<3>", "plus<3, 1>"))
    assert K.main(["HEAD", "--repo", str(repo), "--alias", r"Li3ELi1EEEvPf=Li3EEEvPf"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 same, 0 differs, 0 gone, 0 new"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_a_changed_header_compares_every_source_and_a_deleted_one_is_gone(tmp_path, capsys):
    repo = repo_with_kernels(tmp_path)
    src = repo / "plugins" / "kernels"
    (src / "two.cu").write_text("__global__ void other(float* x) { x[0] = 1.f; }\n")
    (src / "k.cuh").write_text("#pragma once\n")
    for cmd in (["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "two"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True)
    (src / "two.cu").unlink()
    (src / "k.cuh").write_text("#pragma once\n// changed\n")
    assert K.main(["HEAD", "--repo", str(repo)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gone") and "two.cu" in out[0] and "other" in out[0]
    assert out[-1] == "2 same, 0 differs, 1 gone, 0 new"  # k.cu's two kernels, compiled though only the header moved


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    repo = repo_with_kernels(tmp_path)
    assert K.main(["no-such-ref", "--repo", str(repo)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no-such-ref: not a commit of {repo}"
    assert K.main(["HEAD", "notes.txt", "--repo", str(repo)]) == 2
    assert capsys.readouterr().err.strip() == "error: notes.txt: not a .cu file of plugins/kernels"
    assert K.main(["--libs", str(tmp_path / "none.so"), str(tmp_path / "none.so")]) == 2
    assert "no such file" in capsys.readouterr().err
    for cmd in (["rm", "-rq", "plugins"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "none"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True)
    assert K.main(["HEAD", "k.cu", "--repo", str(repo)]) == 2
    assert capsys.readouterr().err.strip() == "error: HEAD has no plugins/kernels"
