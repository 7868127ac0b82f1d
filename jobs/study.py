"""Entry point for `ray job submit --working-dir . -- python jobs/study.py STUDY.yaml`.

Thin on purpose: the same code as `raymem study`, run as a Ray job on the cluster the
job was submitted to (ray.init() picks up the job's RAY_ADDRESS).
"""

import sys
from pathlib import Path

# The job's working directory is a copy of the repository; make its raymem importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raymem.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
