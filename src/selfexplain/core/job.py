"""The preamble every workflow script shares: its output to the rule's log, and torch limited
to the rule's threads (so parallel jobs do not oversubscribe the cores)."""

from __future__ import annotations

import sys


def job(snakemake, *, torch_threads: bool = True) -> None:
    """Send stdout and stderr to the rule's log (snakemake.log[0]) and, when the script uses
    torch, give it the rule's threads. Call it first in a script's body."""
    sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: SIM115 - the job's lifetime
    if torch_threads:
        import torch  # only the scripts that run a model pay for it

        torch.set_num_threads(snakemake.threads)
