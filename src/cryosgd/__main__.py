import os
import sys

from .cli import main

if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # under torchrun: an unexpected error reaches its failure summary
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)

sys.exit(main())
