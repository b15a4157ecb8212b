"""The thesis's own numbers as tables, shown next to the reproduced ones ("thesis vs reproduced" sections).

Each CSV file in this folder is one table, loaded with ``load(name)``. Sources:

- ``ch3_thesis``: the numbers of thesis chapter 3 (Choenni, Garrette & Shutova, EMNLP 2023) in long format: Table 3.3
  and Table A.2 (mean TracIn influence, test x train language, XNLI / PAWS-X / MARC), Table 3.4 (share of
  other-language top-100 examples that are translations of in-language ones) and the zero-shot numbers of §3.8.3.
  Used by chapter 01.

- ``ch4_table4_2``: Table 4.2 of R. Choenni, *Multilinguality and Multiculturalism* (PhD thesis, ILLC, University of
  Amsterdam, 2025), also in Choenni, Garrette & Shutova (2023), *Computational Linguistics* 49(3). It gives the LAS of
  few-shot dependency parsing for 82 low-resource test treebanks, each with the high-resource language whose
  subnetwork it used (``transfer_source``). Columns: ``udf75`` is the published UDify zero-shot score (empty where
  UDify reports none), ``udf8`` is UDify retrained on the 8 training treebanks, ``nonep_*`` is non-episodic training,
  ``meta_*`` is first-order MAML. Each has ``full`` (no masks), ``sn_static`` (static subnetworks) and ``sn_dyna``
  (dynamic subnetworks). The values were parsed from the thesis text and checked against its printed averages.
  Used by chapter 02.
- ``ch4_thesis``: the other numbers of thesis chapter 4 in long format, each row labelled (``table``, ``source``) by
  where it is printed: Table 4.1 (mean LAS and best-system share), ``T4.2`` for the total-average row of Table 4.2
  (UDify retrained on the 8 training treebanks, 38.66 LAS), Table 4.3 (unseen and rare labels), Table 4.4
  (training-language LAS and heads switched off), Table 4.5 (selection vs protection), Table 4.6 (gradient
  conflicts) and ``S4.7.2`` for the Pearson correlations given in the prose of §4.7.2. Used by chapter 02.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from mlmc.errors import check_choice


def available() -> list[str]:
    """Names of the reference tables shipped with the package."""
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".csv"))


def load(name: str) -> pd.DataFrame:
    """Load reference table ``name`` (see ``available()``); empty cells become NaN."""
    check_choice("name", name, available())
    with resources.files(__name__).joinpath(f"{name}.csv").open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh)
