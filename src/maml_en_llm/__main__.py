"""`python -m maml_en_llm ...` (and `torchrun ... -m maml_en_llm train ...`): the same CLI as `maml-en-llm`."""

import sys

from .cli import main

sys.exit(main())
