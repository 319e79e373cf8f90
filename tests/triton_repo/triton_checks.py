"""What Triton checks when it loads a model with implicit state, for the tests to apply to our configs. From the
sources of Triton's core (sequence_batch_scheduler.cc: initial_state) and onnxruntime_backend (ValidateInputs,
ValidateBooleanSequenceControl: the model has exactly the config's inputs + control inputs + state inputs,
control tensors are [1] of the configured type), plus the pairing rule of names.py."""
from mamba_deploy.triton_repo.names import mispaired_states

ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 7: "TYPE_INT64", 6: "TYPE_INT32"}


def type_name(config, value):
    return config.DESCRIPTOR.file.enum_types_by_name["DataType"].values_by_number[value].name


def graph_io(model):
    """name -> (Triton data type, dims without the batch axis; -1 for a symbolic axis), inputs and outputs."""
    def describe(values):
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out[v.name] = (ONNX_TO_TRITON[t.elem_type], dims[1:])
        return out
    return describe(model.graph.input), describe(model.graph.output)


def load_problems(config, model):
    """What Triton would refuse when loading `config` with the ONNX `model` (empty: nothing)."""
    inputs, outputs = graph_io(model)
    batching, problems = config.sequence_batching, []
    states = list(batching.state)
    expected_inputs = len(config.input) + len(batching.control_input) + len(states)
    if len(inputs) != expected_inputs:
        problems.append(f"configuration expects {expected_inputs} inputs, model provides {len(inputs)}")
    for io, have in [*((i, inputs) for i in config.input), *((o, outputs) for o in config.output)]:
        if have.get(io.name) != (type_name(config, io.data_type), list(io.dims)):
            problems.append(f"{io.name}: config {type_name(config, io.data_type)} {list(io.dims)}, model "
                            f"{have.get(io.name)}")
    for control in batching.control_input:
        if inputs.get(control.name) != ("TYPE_INT32", [1]) or len(control.control) != 1:
            problems.append(f"control {control.name}: model has {inputs.get(control.name)}")
    listed = {io.name for io in (*config.input, *config.output)}
    for s in states:
        want = (type_name(config, s.data_type), list(s.dims))
        if inputs.get(s.input_name) != want or outputs.get(s.output_name) != want:
            problems.append(f"state {s.input_name}/{s.output_name}: config {want}, model "
                            f"{inputs.get(s.input_name)} / {outputs.get(s.output_name)}")
        if {s.input_name, s.output_name} & listed:
            problems.append(f"state {s.input_name} is also listed as a model input or output")
        init = list(s.initial_state)
        if len(init) != 1 or not init[0].name or not init[0].zero_data or init[0].data_type != s.data_type \
                or list(init[0].dims) != list(s.dims) or -1 in init[0].dims:
            problems.append(f"state {s.input_name}: bad initial_state {init}")
    problems += [f"mis-paired {p}" for p in mispaired_states([(s.input_name, s.output_name) for s in states])]
    return problems
