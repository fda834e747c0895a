import sys

from goldtron.cli import main

code = main()
if sys.argv[1:2] in (["train"], ["launch"]):  # a rank's (or its launcher's) whole process: leave without
    # the interpreter's teardown
    from goldtron.training.fast_exit import exit_now

    exit_now(code)
sys.exit(code)
