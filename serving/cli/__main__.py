"""`python -m serving.cli`: the `serving` command."""

from serving.cli import main

raise SystemExit(main())
