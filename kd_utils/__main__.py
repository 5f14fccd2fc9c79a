import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun, skip interpreter finalisation: gloo threads torn down there abort a rank now and then
    # ("terminate called without an active exception") after the work and the process group are done
    # (2 of 40 two-process runs on a loaded 2-core machine); the command's exit code would be lost.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
