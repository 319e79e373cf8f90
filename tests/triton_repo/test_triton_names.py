"""State names: Triton pairs state outputs with inputs by their rank in byte order, so both must sort alike."""
import pytest

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.triton_repo.names import (StateEntry, check_state_order, graph_states, mispaired_states,
                                            renamed_states)


def triton_pairing(entries):
    """What Triton's SequenceStates::OutputState does: the k-th output name (sorted) feeds the k-th input name."""
    inputs = sorted((e.input_name for e in entries), key=str.encode)
    outputs = sorted((e.output_name for e in entries), key=str.encode)
    return dict(zip(outputs, inputs))


@pytest.mark.parametrize("n_layer", [1, 9, 10, 11, 100, 101])
@pytest.mark.parametrize("scheme", [renamed_states, graph_states])
def test_state_names_sort_alike_for_inputs_and_outputs(scheme, n_layer):
    entries = scheme(n_layer)
    assert len({e.input_name for e in entries}) == len({e.output_name for e in entries}) == 2 * n_layer
    assert triton_pairing(entries) == {e.output_name: e.input_name for e in entries}
    assert mispaired_states([(e.input_name, e.output_name) for e in entries]) == []
    check_state_order(entries)


def test_renamed_states_are_zero_padded_in_layer_order():
    conv = [e for e in renamed_states(101) if e.kind == "conv"]
    assert [e.input_name for e in conv] == sorted(e.input_name for e in conv)
    assert (conv[7].input_name, conv[7].output_name) == ("STATE_IN_conv_007", "STATE_OUT_conv_007")
    assert (conv[7].graph_input, conv[7].graph_output) == ("past_conv_state.7", "present_conv_state.7")
    assert renamed_states(1001)[-1].input_name == "STATE_IN_ssm_1000"
    assert renamed_states(1001)[0].input_name == "STATE_IN_conv_0000"


def test_the_order_check_catches_the_known_triton_mispairing():
    """The names of triton-inference-server/server issue 8586: one input name extends the other, and the
    outputs' suffix reverses their order; Triton swapped these two states."""
    pairs = [("cache_last_channel", "cache_last_channel_next"),
             ("cache_last_channel_len", "cache_last_channel_len_next")]
    entries = [StateEntry(i, "conv", "x", "y", a, b) for i, (a, b) in enumerate(pairs)]
    assert triton_pairing(entries) != {b: a for a, b in pairs}
    assert mispaired_states(pairs) == pairs
    with pytest.raises(MambaDeployError, match="mis-pair"):
        check_state_order(entries)
