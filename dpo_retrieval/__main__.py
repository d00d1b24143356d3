import sys

from dpo_retrieval.cli import main

sys.exit(main())
