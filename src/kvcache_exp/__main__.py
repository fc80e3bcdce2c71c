"""``python -m kvcache_exp --size-a 512 --size-b 256``: one configuration, no Snakemake."""

import sys

from kvcache_exp.cli import main

sys.exit(main())
