"""Train a tiny Mamba1 or Mamba2 language model on the Python docs that ship with every Python.

The corpus is the standard library's `pydoc_data.topics` (about 500,000 characters of English
about Python), so the demo models in `examples/models/` can be rebuilt offline (on one H100):

    PYTHONPATH=. python examples/train_tiny.py --arch mamba1 --steps 3000 --max-seconds 450 --cuda-graph \
        --out examples/models/mamba-tiny-pydoc
    PYTHONPATH=. python examples/train_tiny.py --arch mamba2 --steps 2500 --max-seconds 400 \
        --out examples/models/mamba2-tiny-pydoc

It builds a byte-level BPE tokenizer (any text round-trips), trains the package's own reference
`MambaLM` with AdamW and a cosine learning rate, holds out the last 5% of the corpus, and writes a
standard checkpoint folder: config.json + weights (float16) + tokenizer.json + tokenizer_config.json
+ train_log.json. Mamba1 is written in mamba-ssm format, Mamba2 in Hugging Face format (--format).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mamba_deploy.config import parse_config
from mamba_deploy.models import MambaLM
from mamba_deploy.random_init import init_weights_, write_checkpoint

EOS = "<|endoftext|>"
ARCH_CONFIGS = {  # mamba-ssm config.json fields, vocab_size filled in from the tokenizer
    "mamba1": {"d_model": 256, "n_layer": 6, "ssm_cfg": {"layer": "Mamba1", "d_state": 16, "d_conv": 4, "expand": 2}},
    "mamba2": {"d_model": 256, "n_layer": 6, "ssm_cfg": {"layer": "Mamba2", "d_state": 64, "d_conv": 4, "expand": 2,
                                                         "headdim": 32, "ngroups": 1, "chunk_size": 64}},
}
DEFAULT_FORMAT = {"mamba1": "mamba_ssm", "mamba2": "hf"}


def load_corpus(path: str | None = None) -> str:
    """The training text: a file, or pydoc_data.topics joined in sorted key order."""
    if path:
        return Path(path).read_text(encoding="utf-8")
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def split_corpus(text: str, held_out: float = 0.05) -> tuple[str, str]:
    """(train, held-out): the last `held_out` fraction of characters, cut at a line break."""
    cut = text.rfind("\n", 0, int(len(text) * (1 - held_out))) + 1
    return text[:cut], text[cut:]


def train_tokenizer(text: str, vocab_size: int):
    """Byte-level BPE (ByteLevel pre-tokenizer + decoder) trained on `text`; id 0 is EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n\n"), trainer)
    return tok


def encode(tok, text: str) -> torch.Tensor:
    """text -> token ids (n,) int64."""
    return torch.tensor(tok.encode(text).ids, dtype=torch.long)


def ssm_config(arch: str, vocab_size: int) -> dict:
    """The mamba-ssm config.json of the demo model (vocabulary padded to a multiple of 8)."""
    return {**ARCH_CONFIGS[arch], "vocab_size": vocab_size, "pad_vocab_size_multiple": 8,
            "rms_norm": True, "residual_in_fp32": True, "tie_embeddings": True}


def build_model(arch: str, vocab_size: int, device: str, seed: int) -> MambaLM:
    """A float32 MambaLM with mamba-ssm style init (`init_weights_`), on `device`."""
    model = MambaLM(parse_config(ssm_config(arch, vocab_size), origin=f"train_tiny {arch}"))
    init_weights_(model, seed)
    with torch.no_grad():  # smaller output layers, as GPT-2 / mamba-ssm's rescale_prenorm_residual
        for layer in model.backbone.layers:
            layer.mixer.out_proj.weight.mul_(1.0 / math.sqrt(2 * model.config.n_layer))
    return model.to(device)


def random_batch(ids: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """Random windows of the token stream: (batch, seq_len + 1)."""
    starts = torch.randint(0, ids.numel() - seq_len - 1, (batch,), generator=gen)
    return torch.stack([ids[s:s + seq_len + 1] for s in starts.tolist()])


def stateless_logits(model: MambaLM, input_ids: torch.Tensor) -> torch.Tensor:
    """`model(input_ids)` from a zero state, without writing any state: (batch, seq, vocab_padded).

    MambaLM.forward copies each layer's final state into its InferenceState in place, and Mamba1's
    selective_scan_ref keeps a float32 ssm_state aliased for backward, so autograd refuses it; the
    mixers themselves take None for "zero state" and are differentiable.
    """
    cfg = model.config
    hidden, residual = model.backbone.embedding(input_ids), None
    for layer in model.backbone.layers:
        normed, residual = layer.norm.add_forward(hidden, residual, cfg.residual_in_fp32)
        hidden, _, _ = layer.mixer(normed, None, None)
    normed, _ = model.backbone.norm_f.add_forward(hidden, residual, cfg.residual_in_fp32)
    return model.lm_head(normed)


def lm_loss(model: MambaLM, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of windows (batch, seq_len + 1), over the padded vocabulary
    (as mamba-ssm trains), so the padding logits learn to stay low."""
    logits = stateless_logits(model, windows[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: MambaLM, ids: torch.Tensor, seq_len: int, batch: int) -> float:
    """Mean loss over the held-out stream cut into non-overlapping windows (each from a zero state)."""
    n = (ids.numel() - 1) // seq_len
    windows = torch.stack([ids[i * seq_len:(i + 1) * seq_len + 1] for i in range(n)])
    total = 0.0
    for start in range(0, n, batch):
        chunk = windows[start:start + batch].to(model.device)
        total += lm_loss(model, chunk).item() * chunk.shape[0]
    return total / n


def lr_at(progress: float, lr: float, warmup: float) -> float:
    """Linear warmup over the first `warmup` fraction, then cosine from lr to lr / 10."""
    if progress < warmup:
        return lr * progress / warmup
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def greedy(model: MambaLM, tok, prompt: str, n_tokens: int) -> str:
    """Greedy continuation of `prompt` by prefill + recurrent decode; returns prompt + continuation."""
    ids = encode(tok, prompt)[None].to(model.device)
    state = model.new_state(1)
    logits = model.prefill(ids, state)
    out = ids[0].tolist()
    for _ in range(n_tokens):
        nxt = logits[0, -1, :model.config.vocab_size].argmax().item()
        out.append(nxt)
        logits = model.decode(torch.tensor([[nxt]], device=model.device), state)
    return tok.decode(out)


def make_optimizer(model: MambaLM, args) -> torch.optim.AdamW:
    """AdamW, no weight decay on vectors; capturable (tensor LR) when the step is a CUDA graph."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    lr = torch.tensor(args.lr, device=args.device) if args.cuda_graph else args.lr
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95),
                             capturable=args.cuda_graph)


def eager_step(model: MambaLM, opt, windows: torch.Tensor) -> torch.Tensor:
    """One AdamW step on windows (batch, seq_len + 1); returns the loss (a 0-d tensor)."""
    loss = lm_loss(model, windows)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach()


def graphed_step(model: MambaLM, opt, first: torch.Tensor):
    """Capture one whole training step (forward, backward, clip, AdamW) as a CUDA graph; the
    reference Mamba1 scan is ~10^4 tiny kernels a step, so replay removes the launch overhead.
    Returns step(windows) -> loss; `first` (batch, seq_len + 1) fixes the shapes."""
    static = first.clone()
    opt.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = lm_loss(model, static)
        static_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def step(windows: torch.Tensor) -> torch.Tensor:
        static.copy_(windows)
        graph.replay()
        return static_loss
    return step


def set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def train(args, model: MambaLM, train_ids: torch.Tensor, eval_ids: torch.Tensor) -> dict:
    """AdamW + cosine LR; progress is max(step / steps, elapsed / max_seconds), so a time limit
    still ends at the low LR. Returns the loss curve and held-out evaluations."""
    opt = make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed)
    log = {"train": [], "held_out": []}
    t0, running, step, lr = time.time(), 0.0, 0, 0.0
    run_step = functools.partial(eager_step, model, opt)
    side = torch.cuda.Stream() if args.cuda_graph else None
    while True:
        progress = max(step / args.steps, (time.time() - t0) / args.max_seconds)
        if progress >= 1.0:
            break
        lr = lr_at(progress, args.lr, args.warmup)
        set_lr(opt, lr)
        windows = random_batch(train_ids, args.batch, args.seq_len, gen).to(args.device)
        if side is not None and step < 3:  # warm-up steps on a side stream, then capture
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = eager_step(model, opt, windows)
            torch.cuda.current_stream().wait_stream(side)
        else:
            if side is not None:
                run_step, side = capture_or_eager(model, opt, windows, run_step), None
            loss = run_step(windows)
        running += loss.item()
        step += 1
        if step % args.log_every == 0:
            log["train"].append([step, round(running / args.log_every, 4)])
            print(f"step {step:5d}  loss {running / args.log_every:.4f}  lr {lr:.2e}  "
                  f"{time.time() - t0:6.1f}s", flush=True)
            running = 0.0
        if step % args.eval_every == 0:
            log["held_out"].append([step, round(evaluate(model.eval(), eval_ids, args.seq_len, args.batch), 4)])
            model.train()
            print(f"step {step:5d}  held-out loss {log['held_out'][-1][1]:.4f}", flush=True)
    log.update(steps_done=step, train_seconds=round(time.time() - t0, 1),
               stopped_by="steps" if step >= args.steps else "max_seconds")
    return log


def capture_or_eager(model: MambaLM, opt, windows: torch.Tensor, eager):
    """The CUDA-graph step, or `eager` if capture fails (printed)."""
    try:
        step = graphed_step(model, opt, windows)
        print("training step captured as a CUDA graph", flush=True)
        return step
    except Exception as exc:  # capture is an optimisation only
        print(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); training eagerly", flush=True)
        opt.zero_grad(set_to_none=True)
        return eager


def save(model: MambaLM, tok, out: Path, fmt: str, arch: str) -> Path:
    """Checkpoint folder with float16 weights (A_log, D, dt_bias stay float32) and the tokenizer."""
    half = MambaLM(model.config, dtype=torch.float16)
    half.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    write_checkpoint(half, out, fmt=fmt, ssm_config=ssm_config(arch, model.config.vocab_size))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
         "unk_token": EOS, "model_max_length": 1_000_000}, indent=2))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ARCH_CONFIGS), default="mamba1")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--format", choices=["mamba_ssm", "hf"], help="default: mamba_ssm for mamba1, hf for mamba2")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--max-seconds", type=float, default=float("inf"), help="time limit; the LR schedule follows it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=2045, help="tokenizer size; padded to 2048 in the model")
    p.add_argument("--seq-len", type=int, default=None, help="default: 128 for mamba1, 256 for mamba2")
    p.add_argument("--batch", type=int, default=None, help="default: 64 for mamba1, 32 for mamba2")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=float, default=0.03, help="fraction of training")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--corpus", default=None, help="a text file instead of pydoc_data.topics")
    p.add_argument("--cuda-graph", action="store_true", help="replay the training step as a CUDA graph")
    p.add_argument("--tiny", action="store_true", help="a 2-layer d_model 64 model (for smoke tests)")
    args = p.parse_args(argv)
    args.seq_len = args.seq_len or (128 if args.arch == "mamba1" else 256)
    args.batch = args.batch or (64 if args.arch == "mamba1" else 32)
    args.format = args.format or DEFAULT_FORMAT[args.arch]
    args.cuda_graph = args.cuda_graph and args.device.startswith("cuda")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if args.tiny:
        ARCH_CONFIGS[args.arch] = {**ARCH_CONFIGS[args.arch], "d_model": 64, "n_layer": 2}
    text = load_corpus(args.corpus)
    train_text, eval_text = split_corpus(text)
    tok = train_tokenizer(train_text, args.vocab_size)
    assert tok.decode(tok.encode(text[:2000]).ids) == text[:2000], "tokenizer does not round-trip"
    train_ids, eval_ids = encode(tok, train_text), encode(tok, eval_text)
    print(f"corpus {len(text)} chars -> {train_ids.numel()} train / {eval_ids.numel()} held-out tokens, "
          f"vocab {tok.get_vocab_size()}", flush=True)
    model = build_model(args.arch, tok.get_vocab_size(), args.device, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch}: {n_params / 1e6:.2f}M parameters, {args.batch}x{args.seq_len} tokens/step", flush=True)
    log = train(args, model, train_ids, eval_ids)
    out = save(model, tok, Path(args.out), args.format, args.arch)

    from mamba_deploy.checkpoint import load_reference
    saved = load_reference(out, device=args.device)  # the float16 weights, run in float32
    final = {"train_loss": log["train"][-1][1] if log["train"] else None,
             "held_out_loss_fp32": evaluate(model.eval(), eval_ids, args.seq_len, args.batch),
             "held_out_loss_saved": evaluate(saved, eval_ids, args.seq_len, args.batch)}
    final["held_out_ppl_saved"] = math.exp(final["held_out_loss_saved"])
    sample = greedy(saved, tok, "The list of ", 48)
    print(json.dumps(final), f"\nsample: {sample!r}", flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    (out / "train_log.json").write_text(json.dumps({
        "args": vars(args), "command": " ".join(sys.argv), "device": device, "torch": torch.__version__,
        "python": platform.python_version(), "parameters": n_params, "train_tokens": train_ids.numel(),
        "held_out_tokens": eval_ids.numel(), **final, "sample": sample, **log}, indent=1))


if __name__ == "__main__":
    main()
