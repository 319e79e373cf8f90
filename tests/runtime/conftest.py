"""A tiny export with a small byte-level tokenizer, shared by the runtime tests."""
import pytest
from byte_tokenizer import write_byte_tokenizer


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    from mamba_deploy.export.testing import tiny_export

    folder = tiny_export("mamba2", tmp_path_factory.mktemp("rt"))
    write_byte_tokenizer(folder)
    return folder
