"""The `mamba-deploy` command line: each command parses options and calls one library function.

Errors a user can cause (MambaDeployError, bad usage, OS errors on paths) print one line
`error: …` on stderr and exit 1; Ctrl-C (SIGINT) exits 130 and SIGTERM 143, after the command's
cleanup (an export removes its temp folder). An error about a Python parameter (ParameterError, e.g.
`max_new_tokens`) names the command's flag (`--max-new-tokens`). More commands attach with
`@cli.command()`.

Importing this module must stay cheap (no torch, onnx, transformers, tokenizers, huggingface_hub), so
that `--help` and `--version` answer at once: commands import what they need when they run.
"""
from __future__ import annotations

import json
import re
import signal
import sys
import threading
import warnings
from typing import Any, Optional

import click

from .errors import MambaDeployError, ParameterError
from .runtime.names import backend_names

SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}
SAMPLING_HELP = {"temperature": "0 picks the most likely token (greedy).",
                 "top_k": "Sample from the k likeliest (0: off).",
                 "top_p": "Sample from the likeliest tokens holding this much probability (1: off).",
                 "min_p": "Drop tokens below min-p times the likeliest's probability (0: off).",
                 "repetition_penalty": "Penalise tokens already seen (1: off)."}
BACKEND_HELP = "Engine backend; auto: tensorrt if built, else native on a GPU, else onnxruntime."


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message.splitlines()[0] if message else 'failed'}", err=True)
    sys.exit(code)


class MambaDeployCommand(click.Command):
    """A command whose ParameterErrors name its flag for the parameter (`--top-k`) rather than `top_k`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ParameterError as exc:
            flags = {p.name: max(p.opts, key=len) for p in self.params if isinstance(p, click.Option)}
            if exc.param not in flags:
                raise
            raise MambaDeployError(f"{flags[exc.param]} {exc.problem}") from None


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanup runs as for KeyboardInterrupt."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _set_sigterm_handler(handler: Any) -> Any:
    """Install `handler` for SIGTERM; returns the previous one (None, changing nothing, off the main thread)."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _signalled(exc: BaseException) -> Optional[tuple[str, int]]:
    """("interrupted", 130) / ("terminated", 143) when a KeyboardInterrupt or Terminated caused `exc` (code that
    turns it into another exception, as a dataclass's __set_name__ during an import does), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            return ("interrupted", 130) if isinstance(exc, KeyboardInterrupt) else ("terminated", 143)
        exc = exc.__cause__ or exc.__context__
    return None


class MambaDeployGroup(click.Group):
    """A click group whose `main` turns user errors into one line on stderr and exit status 1."""

    command_class = MambaDeployCommand

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra: Any):
        warnings.showwarning = lambda msg, *a, **k: click.echo(f"warning: {msg}", err=True)
        previous = _set_sigterm_handler(_terminate)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message())
        except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt into Abort
            interrupted = isinstance(exc.__cause__, KeyboardInterrupt)
            _fail("interrupted" if interrupted else "aborted", 130 if interrupted else 1)
        except MambaDeployError as exc:
            _fail(str(exc))
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}")
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Terminated:
            _fail("terminated", 143)
        except Exception as exc:
            signalled = _signalled(exc)
            if signalled is None:
                raise
            _fail(*signalled)
        finally:
            _set_sigterm_handler(previous)
        sys.exit(0)


@click.group(cls=MambaDeployGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mamba-deploy", message="%(version)s")
def cli() -> None:
    """Export Mamba / Mamba-2 language models and run them as inference engines."""


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Export folder to write.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="Model dtype (default: the checkpoint's).")
@click.option("--state-dtype", type=click.Choice(["float32", "model"]), default="float32", show_default=True,
              help="Recurrent state dtype: float32, or the model dtype (smaller, less accurate).")
@click.option("--logits", type=click.Choice(["last", "all"]), default="last", show_default=True,
              help="Prefill returns the last position's logits or all of them.")
@click.option("--ops", type=click.Choice(["plugin", "standard"]), default="plugin", show_default=True,
              help="Custom mamba_deploy ops (with function bodies) or standard ONNX ops only.")
@click.option("--opset", type=int, default=27, show_default=True, help="ONNX opset of the graphs (27 or newer).")
@click.option("--max-seq-len", type=int, default=None,
              help="Hybrids (attention layers): KV cache length per sequence, prompt + output [default: 2048].")
@click.option("--revision", default=None, help="Hub revision (for a Hub id).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Weight-only quantized projections and LM head (ONNX Runtime's MatMulNBits; float32 otherwise).")
@click.option("--force", is_flag=True, help="Overwrite an existing output folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def export(model, output, dtype, state_dtype, logits, ops, opset, max_seq_len, revision, quantize, force, quiet):
    """Export MODEL (a checkpoint folder or Hub id) to ONNX + weights + tokenizer."""
    from .export import ExportOptions, export_model

    options = ExportOptions(dtype, state_dtype, logits, ops, opset, force, revision, max_seq_len, quantize)
    out = export_model(model, output, options, progress=not quiet)
    click.echo(f"exported {model} to {out}")


def _sampling_options(fn):
    for name, default in reversed(SAMPLING_DEFAULTS.items()):
        fn = click.option(f"--{name.replace('_', '-')}", type=type(default), default=default, show_default=True,
                          help=SAMPLING_HELP[name])(fn)
    return fn


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        ids = []
    if not ids:
        raise MambaDeployError(f"--ids must be comma-separated integers, got {text!r}")
    return ids


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def parse_stop(text: str):
    """--stop's value: a token id if all digits, else the text with \\n, \\t, \\r and \\\\ unescaped (a shell
    passes `--stop "\\n"` as a backslash and an n; other backslashes stay as given)."""
    if text.isdigit():
        return int(text)
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), text)


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--prompt", default=None, help="Text prompt.")
@click.option("--ids", default=None, help="Token ids instead of text, e.g. 1,2,3.")
@click.option("--print-ids", is_flag=True, help="Print token ids instead of text (always so without a tokenizer).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Tokens to generate at most.")
@_sampling_options
@click.option("--stop", multiple=True,
              help=r"Stop string (\n, \t, \r, \\ read as escapes) or token id (digits only; repeatable).")
@click.option("--seed", type=int, default=None, help="Sampling seed, 0 <= seed < 2**64 (default: random).")
@click.option("--backend", type=click.Choice(backend_names()), default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end instead of streaming.")
def run(path, prompt, ids, print_ids, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, stop,
        seed, backend, as_json):
    """Generate from an export folder, printing text (or token ids) as it comes."""
    from .runtime import Engine

    if (prompt is None) == (ids is None):
        raise click.UsageError("give exactly one of --prompt or --ids")
    source: Any = prompt if prompt is not None else _parse_ids(ids)
    engine = Engine.load(path, backend=backend, slots=1)  # one prompt: the native engine's state pool of one slot
    if engine.tokenizer is None and prompt is not None:
        raise MambaDeployError(f"{path} has no tokenizer: give token ids with --ids instead of --prompt")
    output = "ids" if print_ids or engine.tokenizer is None else "text"
    stops = [parse_stop(s) for s in stop]
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                  repetition_penalty=repetition_penalty, stop=stops or None, seed=seed, output=output)
    try:
        pieces = engine.generate(source, stream=True, **kwargs)
    except ParameterError as exc:
        if exc.param == "prompt" and ids is not None:
            raise ParameterError("ids", exc.problem) from None
        raise
    _print_pieces(pieces, output, as_json, engine.backend.name)


def _print_pieces(pieces, output: str, as_json: bool, backend: str) -> None:
    """Stream text pieces (or token ids, space-separated) to stdout; or one JSON object at the end."""
    collected = []
    for piece in pieces:
        collected.append(piece)
        if not as_json:
            click.echo(piece if output == "text" else f"{piece} ", nl=False)
    if as_json:
        result = "".join(collected) if output == "text" else collected
        click.echo(json.dumps({output: result, "backend": backend}))
    else:
        click.echo()


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--reference", default=None, help="Reference checkpoint (default: the export's source).")
@click.option("--backend", type=click.Choice(backend_names()), default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--oracle", type=click.Choice(["reference", "transformers"]), default="reference", show_default=True,
              help="Compare with our float32 PyTorch model, or with Hugging Face transformers'.")
@click.option("--prompts", multiple=True, help="Prompt text (repeatable).")
@click.option("--steps", type=int, default=8, show_default=True, help="Decode steps after the prefill.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(path, reference, backend, oracle, prompts, steps, as_json):
    """Compare an engine with the float32 PyTorch reference; exit 1 when outside tolerance."""
    from .verify import format_report, verify_export

    report = verify_export(path, reference, backend, oracle, list(prompts) or None, steps)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    if not report.passed:
        sys.exit(1)


@cli.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(path, as_json):
    """Show what an export folder holds."""
    from .inspect_export import format_inspect, inspect_export

    report = inspect_export(path)
    click.echo(json.dumps(report, indent=2, default=str) if as_json else format_inspect(report))


@cli.command("triton")
@click.argument("path", type=click.Path())
@click.argument("repository", type=click.Path())
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="Triton backend: onnxruntime (the prefill graph) or tensorrt (the prefill plan of 'build').")
@click.option("--name", default=None, help="Model name in the repository (default: the export folder's name).")
@click.option("--max-batch", type=int, default=None,
              help="Triton max_batch_size: sequences one instance runs together (default 8; tensorrt: the engines').")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Instance kind (default: cpu for onnxruntime, gpu for tensorrt).")
@click.option("--idle-timeout", type=float, default=5.0, show_default=True,
              help="Seconds a sequence may stay idle before Triton ends it and drops its state.")
@click.option("--engines", default=None, help="tensorrt: the engines/NAME build to serve (when there are several).")
@click.option("--copy", is_flag=True, help="Copy weights.data (or the plan) instead of hard-linking it.")
@click.option("--force", is_flag=True, help="Replace REPOSITORY if this command wrote it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def triton_cmd(path, repository, backend, name, max_batch, instances, device, idle_timeout, engines, copy, force,
               quiet):
    """Write a Triton Inference Server model repository for PATH (sequence batcher, implicit state)."""
    from .triton_repo import TritonOptions, write_triton_repository

    options = TritonOptions(backend, name, max_batch, instances, device, idle_timeout, engines, force, copy)
    out = write_triton_repository(path, repository, options, progress=not quiet)
    click.echo(f"wrote Triton model repository {out.folder}: model {out.model!r}, {out.backend} backend, "
               f"max batch {out.max_batch}")
    click.echo(f"serve it with: tritonserver --model-repository {out.folder}")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MambaDeployError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise MambaDeployError(f"expected positive integers, got {text!r}")
    return values


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--backend", type=click.Choice(["native", "tensorrt"]), default="native", show_default=True,
              help="Which engines to build.")
@click.option("--max-batch", type=int, default=64, show_default=True, help="Largest batch the engines serve.")
@click.option("--max-seq", type=int, default=2048, show_default=True, help="TensorRT: longest prefill chunk.")
@click.option("--opt-seq", type=int, default=512, show_default=True, help="TensorRT: prefill length to tune for.")
@click.option("--workspace", default=None, help="TensorRT: builder workspace limit, e.g. 4GiB.")
@click.option("--hardware-compatible", is_flag=True, help="TensorRT: engines portable across Ampere+ GPUs.")
@click.option("--version-compatible", is_flag=True, help="TensorRT: plans loadable by later TensorRT versions.")
@click.option("--timing-cache", type=click.Path(), default=None, help="TensorRT: timing cache to read and update.")
@click.option("--plugin-lib", type=click.Path(), default=None, help="TensorRT: plugin library (default: built one).")
def build(path, backend, max_batch, max_seq, opt_seq, workspace, hardware_compatible, version_compatible,
          timing_cache, plugin_lib):
    """Build engines for this GPU from an export folder (writes engines/<gpu>-<dtype>/build.json)."""
    if backend == "native":
        from .native import build_native

        folder = build_native(path, max_batch=max_batch)
    else:
        from .tensorrt import build_engines

        folder = build_engines(path, max_batch, max_seq, opt_seq, workspace, hardware_compatible,
                               version_compatible, timing_cache, plugin_lib)
    click.echo(f"built {backend} engines in {folder}")


CPU_BENCH_DEFAULTS = {"batches": "1", "prompt_len": 32, "gen_len": 32, "prefill_len": 512, "dtype": "float32"}
GPU_BENCH_DEFAULTS = {"batches": "1,16,64", "prompt_len": 100, "gen_len": 200, "prefill_len": 2048, "dtype": "float16"}


@cli.command()
@click.argument("path", type=click.Path(), required=False)
@click.option("--backend", type=click.Choice(["native", "onnxruntime", "torch"]), default="native", show_default=True,
              help="Backend to measure: native (GPU) or a CPU backend.")
@click.option("--batch", "batches", default=None, help="Batch sizes, comma-separated [default: 1,16,64; CPU: 1].")
@click.option("--prompt-len", type=int, default=None,
              help="Prompt tokens prefilled before the timed decode [default: 100; CPU: 32].")
@click.option("--gen-len", type=int, default=None, help="Decode steps per timed run [default: 200; CPU: 32].")
@click.option("--prefill-len", type=int, default=None,
              help="Prompt length of the prefill timing [default: 2048; CPU: 512].")
@click.option("--random-init", metavar="NAME", default=None,
              help="Bench a random checkpoint of a published shape (mamba-130m ... mamba2-2.7b) instead of PATH.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
              help="Dtype the engine runs in (CPU: the --random-init export's) [default: float16; CPU: float32].")
@click.option("--threads", type=int, default=None, help="CPU backends: threads (default: the cores, at most 8).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="CPU backends with --random-init: export with quantized projections (as export --quantize).")
@click.option("--profile", is_flag=True, help="Also list the kernels of one decode step and one prefill.")
@click.option("--generate", is_flag=True, help="Also time Engine.generate end to end (T=0.7, top-p 0.9).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def bench(path, backend, batches, prompt_len, gen_len, prefill_len, random_init, dtype, threads, quantize, profile,
          generate, as_json):
    """Decode ms/token and tokens/s per batch size, prefill ms, peak memory, GB/s vs the weight-read floor."""
    from .random_init import PRESETS

    cpu = backend != "native"
    given = {"batches": batches, "prompt_len": prompt_len, "gen_len": gen_len, "prefill_len": prefill_len,
             "dtype": dtype}
    defaults = CPU_BENCH_DEFAULTS if cpu else GPU_BENCH_DEFAULTS
    batches, prompt_len, gen_len, prefill_len, dtype = (defaults[k] if v is None else v for k, v in given.items())
    if (path is None) == (random_init is None):
        raise MambaDeployError("give an export folder or --random-init NAME (not both)")
    if random_init is not None and random_init.split("/")[-1].removesuffix("-hf") not in PRESETS:
        raise MambaDeployError(f"--random-init: unknown model {random_init!r}; known: {', '.join(PRESETS)}")
    if min(prompt_len, gen_len, prefill_len) < 1:
        raise MambaDeployError("--prompt-len, --gen-len and --prefill-len must be positive")
    batch_sizes = _int_list(batches)
    if cpu:
        _bench_cpu(path, backend, batch_sizes, prompt_len, gen_len, prefill_len, random_init, dtype, threads,
                   quantize, as_json)
        return
    if threads is not None or quantize is not None:
        raise MambaDeployError("--threads and --quantize are options of the CPU backends (--backend onnxruntime|torch)")
    from .native import available, unavailable_reason

    if not available():
        raise MambaDeployError(f"the native backend is unavailable here: {unavailable_reason()}")
    from .bench import bench as run_bench

    rows = run_bench(path, backend, batch_sizes, prompt_len, gen_len, prefill_len, random_init, dtype,
                     profile=profile, print_fn=(lambda _: None) if as_json else click.echo, generate=generate)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))


def _bench_cpu(path, backend, batch_sizes, prompt_len, gen_len, prefill_len, random_init, dtype, threads, quantize,
               as_json) -> None:
    if threads is not None and threads < 1:
        raise MambaDeployError(f"--threads must be positive, got {threads}")
    if quantize is not None and random_init is None:
        raise MambaDeployError("--quantize applies to --random-init (an export folder is benched as exported: "
                               "export it with --quantize)")
    from .bench_cpu import bench_cpu

    rows = bench_cpu(path, backend, batch_sizes, prompt_len, gen_len, prefill_len, random_init, dtype, quantize,
                     threads, print_fn=(lambda _: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))


@cli.command()
@click.argument("path", type=click.Path(), required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on (0: a free one).")
@click.option("--backend", type=click.Choice(backend_names()), default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--max-batch", type=int, default=16, show_default=True, help="State slots: requests decoded together.")
@click.option("--max-queue", type=int, default=256, show_default=True,
              help="Requests that may wait for a slot; more get HTTP 429.")
@click.option("--max-prompt-tokens", type=int, default=4096, show_default=True,
              help="Longest prompt accepted (HTTP 400 above).")
@click.option("--max-tokens-limit", type=int, default=4096, show_default=True,
              help="Largest max_tokens a request may ask for.")
@click.option("--api-key", envvar="MAMBA_DEPLOY_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /v1 (or set MAMBA_DEPLOY_API_KEY).")
@click.option("--model-name", default=None, help="Model id the API reports (default: the export folder's name).")
@click.option("--random-init", metavar="NAME", default=None,
              help="Serve random weights of a published shape on the native backend (load tests; token ids only).")
@click.option("--drain-timeout", type=float, default=10.0, show_default=True,
              help="On Ctrl-C/SIGTERM, seconds in-flight requests may finish before they are cancelled.")
@click.option("--access-log", is_flag=True, help="Log every request.")
def serve(path, **options):
    """Serve PATH (an export folder) as an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)."""
    from .serve import ServeOptions, run_server

    run_server(path, ServeOptions(**options), print_fn=lambda line: click.echo(line))


def main(argv: Optional[list[str]] = None) -> None:
    cli.main(argv, prog_name="mamba-deploy")


if __name__ == "__main__":
    main()
