"""`python run.py` = `voicebot serve`; `python run.py --help` lists every subcommand."""

import sys

from voicebot.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
