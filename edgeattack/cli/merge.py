"""`edgeattack merge-artifacts`: join the per-image artifacts of a sharded attack into one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeattack.cli.options import handle_errors


@handle_errors
def merge_command(
    out: Annotated[Path, typer.Argument(help="The merged artifact (.npz is appended when missing).")],
    shards: Annotated[
        list[Path], typer.Argument(help="Per-image artifacts of one attack over disjoint images (--shard I/N runs).")
    ],
) -> None:
    """Merge the per-image artifacts of a sharded attack (`attack --shard I/N`, torchrun ranks) into one,
    rows sorted by dataset index; refuses files of different attacks or with overlapping images."""
    from edgeattack.artifact_merge import merge_artifacts
    from edgeattack.artifacts import PerturbationArtifact

    written = merge_artifacts(shards, out)
    merged = PerturbationArtifact.load(written)
    typer.echo(f"merged {len(shards)} artifacts ({len(merged.indices)} images): {written}")
