"""Run configuration: Megatron's flags parsed, checked and completed into one namespace.

The public entry point is `goldtron.arguments` (parse_args, ConfigError, padded_vocab_size,
args_to_dict); the modules here hold the pieces:

- errors.py          ConfigError, the one exception bad input turns into
- megatron_flags.py  Megatron flags accepted with no effect (with reasons) and those refused
- parser.py          the argparse surface: every flag goldtron implements, Megatron's names
- validation.py      the checks and derived fields (layout, batch, schedule, vocabulary, dtype, threads)
- flags_doc.py       renders docs/flags.md from the tables above, so docs cannot drift
"""
