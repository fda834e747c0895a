"""`goldtron ckpt inspect DIR`, `goldtron ckpt export DIR --to torch OUT.pt`,
`goldtron ckpt export DIR --to hf OUTDIR` (a Hugging Face GPT-2 folder) and
`goldtron ckpt export DIR --to megatron OUTDIR` (a Megatron-Core torch_dist save directory).

Both read a checkpoint in this one process, whatever layout saved it (no torchrun needed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from goldtron.checkpoint.common_state import describe_layout_record
from goldtron.checkpoint.errors import CheckpointError

EXIT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goldtron ckpt", description="torch_dist checkpoint tools")
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="iteration, saved layout, tensors, what state is present")
    inspect.add_argument("dir", help="a --save directory (the tracker picks the iteration) or an iter_XXXXXXX folder")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    export = sub.add_parser("export", help="write the checkpoint in another format")
    export.add_argument("dir", help="a --save directory or an iter_XXXXXXX folder")
    export.add_argument("--to", required=True, choices=["torch", "hf", "megatron"],
                        help="torch: one plain state dict file for torch.load; "
                             "hf: a Hugging Face GPT-2 folder (config.json, pytorch_model.bin) for "
                             "transformers.GPT2LMHeadModel.from_pretrained; "
                             "megatron: a Megatron-Core torch_dist save directory (Megatron-LM --load)")
    export.add_argument("out", help="output file (torch) or folder (hf, megatron: must not exist)")
    return parser


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _describe(found) -> dict:
    from goldtron.checkpoint.export import rng_ranks, tensor_entries
    from goldtron.checkpoint.model_state import OPTIMIZER_PREFIX, is_model_key

    entries = tensor_entries(found)
    common = found.common
    model = [e for e in entries if is_model_key(e.key)]
    optimizer = [e for e in entries if e.key.startswith(OPTIMIZER_PREFIX)]
    files = {info.relative_path for info in found.dcp_metadata.storage_data.values()}
    return {
        "path": found.path, "iteration": common["iteration"], "consumed_samples": common["consumed_samples"],
        "layout": common["layout"], "goldtron_version": common.get("goldtron_version"),
        "format": "goldtron" if found.megatron is None else "megatron-core",
        "common_file": os.path.basename(found.common_file),
        "opt_param_scheduler": common["opt_param_scheduler"],
        "contents": {
            "model": {"tensors": len(model), "bytes": sum(e.nbytes for e in model),
                      "parameters": sum(e.nbytes // e.dtype.itemsize for e in model)},
            "optimizer": {"tensors": len(optimizer), "bytes": sum(e.nbytes for e in optimizer)} if optimizer else None,
            "rng_ranks": rng_ranks(found),
            "args": bool(common.get("args")),
        },
        "files": len(files),
        "tensors": [{"key": e.key, "shape": list(e.shape), "dtype": str(e.dtype).replace("torch.", ""),
                     "chunks": e.chunks, "bytes": e.nbytes} for e in entries],
    }


def _print_text(d: dict) -> None:
    layout = d["layout"]
    c = d["contents"]
    print(f"checkpoint   {d['path']}")
    print(f"iteration    {d['iteration']}   consumed samples {d['consumed_samples']}")
    print(f"saved under  {describe_layout_record(layout)} (world {layout['world_size']}), "
          + (f"goldtron {d['goldtron_version']}" if d["format"] == "goldtron" else "Megatron-Core"))
    print(f"model        {c['model']['tensors']} tensors, {c['model']['parameters']:,} parameters, "
          f"{_human_bytes(c['model']['bytes'])}")
    opt = c["optimizer"]
    print("optimizer    " + (f"{opt['tensors']} tensors, {_human_bytes(opt['bytes'])}" if opt else "not saved"))
    print("rng          " + (f"{len(c['rng_ranks'])} rank(s): {', '.join(c['rng_ranks'])}" if c["rng_ranks"] else "not saved"))
    sched = d["opt_param_scheduler"]
    print(f"lr schedule  {sched['lr_decay_style']} max {sched['max_lr']} min {sched['min_lr']} "
          f"at {sched['num_steps']} samples")
    print(f"files        {d['files']} DCP data file(s) + .metadata, {d['common_file']}, metadata.json")
    print("tensors:")
    width = max((len(t["key"]) for t in d["tensors"]), default=10)
    for t in d["tensors"]:
        shape = "x".join(map(str, t["shape"])) or "scalar"
        print(f"  {t['key'].ljust(width)}  {shape:>12}  {t['dtype']:>8}  {t['chunks']:>2} chunk(s)  "
              f"{_human_bytes(t['bytes']):>10}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from goldtron.checkpoint.export import model_tensors, open_checkpoint, plain_state_dict

    try:
        found = open_checkpoint(args.dir)
        if args.command == "inspect":
            description = _describe(found)
            if args.json:
                print(json.dumps(description, indent=1))
            else:
                _print_text(description)
            return 0
        if found.megatron is not None:
            raise CheckpointError(
                f"{found.path} is a Megatron-Core checkpoint; `goldtron ckpt export` writes goldtron checkpoints "
                "in other formats. Load it with `goldtron train --load` (it reads Megatron's format) and export "
                "the checkpoint that run saves")
        if args.to == "hf":
            from goldtron.checkpoint.hf_export import write_hf_folder

            write_hf_folder(model_tensors(found), found.common, args.out)
            print(f"wrote {args.out} (iteration {found.common['iteration']}, Hugging Face GPT-2: config.json, "
                  "pytorch_model.bin)")
            return 0
        if args.to == "megatron":
            from goldtron.checkpoint.megatron_export import export_megatron

            path = export_megatron(found, args.out)
            print(f"wrote {path} (iteration {found.common['iteration']}, Megatron-Core torch_dist: stacked layers, "
                  "common.pt; RNG state not written)")
            return 0
        import torch

        torch.save(plain_state_dict(found), args.out)
        print(f"wrote {args.out} (iteration {found.common['iteration']}, one plain state dict)")
        return 0
    except CheckpointError as error:
        print(f"goldtron ckpt: error: {error}", file=sys.stderr)
        return EXIT_ERROR
