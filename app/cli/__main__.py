"""`python -m app.cli` runs `dfcl`."""

from app.cli import main

main()
