"""`python -m edgeattack` runs the CLI."""

from edgeattack.cli.app import main

main()
