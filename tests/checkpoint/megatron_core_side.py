"""Megatron-Core's side of the interchange tests, run as its own process (one gloo rank, CPU):

    python megatron_core_side.py JOBS.json
        JOBS: [{"mode": "save" | "load", "dir": DIR, "out": JSON_OUT, "flags": GOLDTRON_FLAGS}, ...],
        done in order in this one process (importing Megatron-Core costs seconds; a job little):
    save: builds Megatron-Core's GPTModel for the flags (local layer spec), takes one AdamW step on
        the run's first global batch (goldtron's data pipeline gives the tokens, so both sides see
        the same batch), saves a torch_dist checkpoint of iteration 1 the way Megatron-LM lays it
        out (DIR/latest_checkpointed_iteration.txt, DIR/iter_0000001/), and writes to JSON_OUT the
        forward loss of the saved weights on the second global batch (what goldtron's first step
        after loading sees), then the loss after one more step from there.
    load: loads the checkpoint DIR's tracker names into a GPTModel with strict key checking and
        writes the loss of the loaded weights on the batch after the checkpoint's consumed samples
        (plus the state it loaded, as torch.save next to JSON_OUT, for bitwise comparisons).

Megatron-Core's own training and save under TP2 x PP2 on 4 ranks is megatron_core_parallel.py.
Megatron-Core is a test-only dependency: goldtron itself never imports it. What Megatron-Core
needs to run on a CPU, each named where it is done:
- TransformerConfig(use_cpu_initialization=True): its default creates weights on the GPU;
- an explicit boolean causal attention mask: the default mask is built on CUDA;
- initialize_rng_tracker(inference_rng_tracker=True, force_reset=True): the default tracker forks
  CUDA RNG states (valid here because dropout is 0, so no random stream is drawn);
- torch.cuda.current_device() answers "cpu": attention takes a scratch tensor from a global memory
  buffer that allocates there, and torch_dist's save all-reduces a status tensor made there;
- torch.cuda.synchronize made a no-op: torch_dist's save calls it before writing (nothing is on a GPU);
- the optimizer state is built with Megatron's own dist_checkpointing.optimizer helpers from a
  torch AdamW, as Megatron's FP32Optimizer.sharded_state_dict does, because FP32Optimizer itself
  allocates its loss scale on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist


def goldtron_args(flags: list[str]):
    from goldtron.arguments import parse_args

    return parse_args(flags, world_size=1)


def global_batch(args, first_sample: int):
    """(tokens, labels, loss_mask) of the global batch goldtron trains on from `first_sample`."""
    from goldtron.data.provider import build_datasets, build_tokenizer
    from goldtron.data.sampler import collate

    train, _, _ = build_datasets(args, build_tokenizer(args), first_sample + 2 * args.global_batch_size, 0, 0,
                                 is_builder_rank=True, barrier=lambda: None)
    tokens, labels, loss_mask, _ = collate([train[i] for i in range(first_sample, first_sample + args.global_batch_size)])
    return tokens, labels, loss_mask


def cpu_workarounds() -> None:
    from megatron.core.tensor_parallel.random import initialize_rng_tracker

    # Megatron-Core places scratch and status tensors on torch.cuda.current_device() (attention's
    # global memory buffer, torch_dist's save status all-reduce): on a CPU that is the CPU.
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda device=None: None  # torch_dist's save waits for CUDA copies to finish
    initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)


def megatron_model(args, tp: int = 1, pp: int = 1):
    """Megatron-Core's GPTModel (local layer spec) for the flags; this rank's stage under TP x PP."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(
        num_layers=args.num_layers, hidden_size=args.hidden_size, num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups, ffn_hidden_size=args.ffn_hidden_size,
        hidden_dropout=0.0, attention_dropout=0.0, init_method_std=args.init_method_std,
        layernorm_epsilon=args.norm_epsilon, add_bias_linear=args.add_bias_linear,
        use_cpu_initialization=True, params_dtype=torch.float32, perform_initialization=True,
        attention_softmax_in_fp32=True, apply_query_key_layer_scaling=False, bias_dropout_fusion=False,
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        gradient_accumulation_fusion=False, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        pipeline_dtype=torch.float32,
    )
    torch.manual_seed(args.seed)
    return GPTModel(config, get_gpt_layer_local_spec(), vocab_size=args.padded_vocab_size,
                    pre_process=parallel_state.is_pipeline_first_stage(),
                    post_process=parallel_state.is_pipeline_last_stage(),
                    max_sequence_length=args.max_position_embeddings,
                    share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
                    position_embedding_type=args.position_embedding_type)


def causal_mask(tokens: torch.Tensor) -> torch.Tensor:
    """Megatron's boolean attention mask, True = masked (its default one is built on CUDA)."""
    seq = tokens.shape[1]
    return torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]


def positions_of(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)


def mean_loss(model, tokens, labels, loss_mask) -> torch.Tensor:
    per_token = model(tokens, positions_of(tokens), causal_mask(tokens), labels=labels)  # [b, s], fp32
    return (per_token * loss_mask).sum() / loss_mask.sum()


def megatron_args(args, iteration: int, consumed: int, tp: int = 1, pp: int = 1, world: int = 1,
                  distributed_optimizer: bool = False, fully_reshardable: bool = True) -> argparse.Namespace:
    """The run's arguments as Megatron-LM records them (its dests; an enum inside, as Megatron's has)."""
    from megatron.core.transformer.enums import AttnBackend

    names = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
             "group_query_attention", "seq_length", "max_position_embeddings", "position_embedding_type",
             "swiglu", "add_bias_linear", "normalization", "qk_layernorm", "untie_embeddings_and_output_weights",
             "make_vocab_size_divisible_by", "padded_vocab_size", "vocab_size", "tokenizer_type",
             "micro_batch_size", "global_batch_size", "lr", "min_lr", "lr_decay_style", "seed", "train_iters")
    return argparse.Namespace(
        **{name: getattr(args, name) for name in names}, tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp, data_parallel_size=world // (tp * pp), world_size=world,
        iteration=iteration, consumed_train_samples=consumed, consumed_valid_samples=0, ckpt_format="torch_dist",
        attention_backend=AttnBackend.auto, params_dtype=torch.float32,
        use_distributed_optimizer=distributed_optimizer, dist_ckpt_optim_fully_reshardable=fully_reshardable)


def sharded_state(model, optimizer):
    """Megatron-LM's torch_dist state: the model's sharded_state_dict, and the optimizer's as
    FP32Optimizer.sharded_state_dict builds it (moments as ShardedTensors, one common step)."""
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map, optim_state_to_sharding_state,
    )

    model_state = model.sharded_state_dict()
    optim_state = optimizer.state_dict()  # a copy of the tensors' references; the step is taken out of it
    optim_state["state"] = {k: dict(v) for k, v in optim_state["state"].items()}
    steps = {float(s.pop("step")) for s in optim_state["state"].values()}
    id_map = get_param_id_to_sharded_param_map(model_state, [p for g in optimizer.param_groups for p in g["params"]])
    optim_state_to_sharding_state(optim_state, id_map, exclude_keys="step")
    optim_state["state"]["common_step"] = int(steps.pop())
    return model_state, optim_state


def megatron_adamw(model, args) -> torch.optim.AdamW:
    """AdamW with Megatron's parameter groups: no weight decay for biases and 1-d tensors."""
    named = list(model.named_parameters())
    plain = [p for n, p in named if n.endswith(".bias") or p.dim() == 1]
    decay = [p for n, p in named if not (n.endswith(".bias") or p.dim() == 1)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": plain, "weight_decay": 0.0}],
                             lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps)


def train_step(model, optimizer, schedule, args, first_sample: int) -> None:
    """One Megatron training step: forward, backward, clip the global norm, AdamW, schedule."""
    optimizer.zero_grad()
    mean_loss(model, *global_batch(args, first_sample)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
    optimizer.step()
    schedule.step(args.global_batch_size)


def losses(model, args, first_sample: int) -> dict:
    """Megatron's forward loss on the global batch from `first_sample`, and the same loss with the
    padded vocabulary rows kept out of the softmax (goldtron's semantics)."""
    tokens, labels, loss_mask = global_batch(args, first_sample)
    model.eval()
    with torch.no_grad():
        loss = mean_loss(model, tokens, labels, loss_mask).item()
        logits = model(tokens, positions_of(tokens), causal_mask(tokens))  # [b, s, padded V]
        real = torch.nn.functional.cross_entropy(logits[..., :args.real_vocab_size].float().flatten(0, 1),
                                                 labels.flatten(), reduction="none")
        masked = ((real * loss_mask.flatten()).sum() / loss_mask.sum()).item()
    model.train()
    return {"loss": loss, "loss_padded_rows_masked": masked}


def megatron_schedule(optimizer, args):
    """Megatron-LM's OptimizerParamScheduler for the flags, stepped in samples as Megatron-LM does."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    gb = args.global_batch_size
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=args.lr, min_lr=args.min_lr, lr_warmup_steps=args.lr_warmup_iters * gb,
        lr_decay_steps=(args.lr_decay_iters or args.train_iters) * gb, lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay, end_wd=args.weight_decay, wd_incr_steps=args.train_iters * gb,
        wd_incr_style="constant")


def save_as_megatron_lm(state: dict, directory: str, iteration: int) -> None:
    """DIR/iter_XXXXXXX/ by torch_dist, then DIR/latest_checkpointed_iteration.txt, as Megatron-LM lays them out."""
    from megatron.core import dist_checkpointing

    folder = os.path.join(directory, f"iter_{iteration:07d}")
    os.makedirs(folder, exist_ok=True)
    dist_checkpointing.save(state, folder)
    if not dist.get_rank():
        with open(os.path.join(directory, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(iteration))


def save(directory: str, out: str, args) -> None:
    model = megatron_model(args)
    optimizer = megatron_adamw(model, args)
    gb = args.global_batch_size
    schedule = megatron_schedule(optimizer, args)
    train_step(model, optimizer, schedule, args, 0)
    at_save = losses(model, args, gb)  # what goldtron's first step after loading computes
    model_state, optim_state = sharded_state(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state, "args": megatron_args(args, 1, gb),
             "checkpoint_version": 3.0, "iteration": 1, "opt_param_scheduler": schedule.state_dict(),
             "num_floating_point_operations_so_far": 0}
    save_as_megatron_lm(state, directory, 1)
    # Megatron goes on from the checkpoint: goldtron's second step after loading must see this loss
    # (the Adam moments, step and learning rate it loaded decide the update in between).
    train_step(model, optimizer, schedule, args, gb)
    json.dump({**at_save, "after_next_step": losses(model, args, 2 * gb)}, open(out, "w"))


def load(directory: str, out: str, args) -> None:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    iteration = open(os.path.join(directory, "latest_checkpointed_iteration.txt")).read().strip()
    folder = os.path.join(directory, f"iter_{int(iteration):07d}")
    model = megatron_model(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    for p in model.parameters():  # Megatron's init_state_fn: moments exist before they are loaded into
        optimizer.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    model_state, optim_state = sharded_state(model, optimizer)
    loaded = dist_checkpointing.load({"model": model_state, "optimizer": optim_state}, folder,
                                     strict=StrictHandling.RAISE_ALL)
    model.load_state_dict(loaded["model"], strict=True)
    consumed = loaded["args"].consumed_train_samples
    tokens, labels, loss_mask = global_batch(args, consumed)
    model.eval()
    with torch.no_grad():
        loss = mean_loss(model, tokens, labels, loss_mask).item()
        logits = model(tokens, positions_of(tokens), causal_mask(tokens))  # [b, s, padded V]
    # The optimizer state comes back keyed by parameter index, the order of model.parameters().
    names = [name for name, _ in model.named_parameters()]
    moments = {kind: {names[i]: state[kind] for i, state in loaded["optimizer"]["state"].items() if isinstance(i, int)}
               for kind in ("exp_avg", "exp_avg_sq")}
    torch.save({"model": {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
                "optimizer": moments, "tokens": tokens, "logits": logits}, out + ".pt")
    json.dump({"loss": loss, "iteration": loaded["iteration"], "consumed": consumed,
               "common_step": loaded["optimizer"]["state"].get("common_step")}, open(out, "w"))


def main(argv: list[str]) -> None:
    jobs = json.load(open(argv[0]))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{_free_port()}")
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(1, 1)
    torch.set_num_threads(1)
    for job in jobs:
        cpu_workarounds()  # also resets the RNG tracker: each job starts as a fresh run
        (save if job["mode"] == "save" else load)(job["dir"], job["out"], goldtron_args(job["flags"]))
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main(sys.argv[1:])
