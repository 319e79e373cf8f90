"""Fixtures for the Triton repository tests: private tiny exports (a repository hard-links their weights.data,
which onnx's own loader then refuses, so the session-wide `exports` are left alone) and Triton's config parser."""
import pytest


@pytest.fixture(scope="session")
def own_exports(tmp_path_factory):
    """own_exports(arch, **options) -> a tiny export folder for these tests only, built once per session."""
    from mamba_deploy.export.testing import built_once, tiny_export

    return built_once(lambda arch, **options: tiny_export(arch, tmp_path_factory.mktemp(f"triton-{arch}"), **options))


@pytest.fixture(scope="session")
def parse_config():
    """parse_config(path) -> the config.pbtxt at `path` parsed into Triton's ModelConfig protobuf."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as exc:  # tritonclient without its grpc extra raises RuntimeError
        pytest.skip(f"needs tritonclient[grpc] (pip install -e '.[test]'): {exc}")
    from google.protobuf import text_format

    def parse(path):
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())

    return parse
