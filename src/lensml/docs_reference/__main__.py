"""``python -m lensml.docs_reference OUT_DIR [--benchmarks DIR]``."""

from lensml.docs_reference import main

raise SystemExit(main())
