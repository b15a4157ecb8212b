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
- ``ch6_thesis`` (chapter 04): numbers of thesis chapter 6 (Choenni, Shutova & van Rooij, EMNLP 2021) in long format:
  Table 6.2 (stereotype rows per category; rows per engine counted in the released data), recall@200 per category and
  mean recall@k of Fig. 6.1, cross-model RSA (Fig. D.3), mean Δρ after fine-tuning per news source and data fraction
  (Fig. 6.5), recall after fine-tuning (Fig. 6.4), (1-ρ)·100 of Table D.2 (RoBERTa-B rows) and Fig. 6.3's
  source-vs-source ρ. Values recomputed from the author's released outputs are marked so in ``source``.
- ``ch6_social_groups.json`` (chapter 04; read by ``mlmc.stereotypes.load_social_groups``): the 374 social groups in 9
  categories and the 5 query templates of thesis App. D, spelled as in the released dataset
  (RochelleChoenni/stereotypes_in_lms, MIT). Content warning: the sexuality list holds slurs the data was collected
  with.
- ``ch5_thesis``: the numbers of thesis chapter 5 (Choenni, Shutova & Garrette, Findings of NAACL 2024) in long
  format (``table, task, lang, metric, value, source``): binary dev accuracy of full fine-tuning (§5.3), Table C.1
  (heads switched off per language), the in-language changes of Figs. 5.2-5.3 as stated in the text, Table C.2
  (subnetwork accuracy, FT + mask vs SFT + mask), the random-mask SFT numbers of §5.6.1, and the signs of the
  correlations and comparisons of §5.7 (-1 negative, +1 positive, where the thesis gives no number). Used by
  chapter 03.
- ``ch8_thesis``: thesis chapter 8 (Choenni & Shutova 2024, arXiv:2408.16482) in long format: Table 8.1 (% of the
  zero-shot misaligned items that self-alignment with chrF++ demonstrations improved, left unchanged or worsened, per
  model and language; Llama3 and Mistral only en/de/ro, the columns that survive in the thesis text) and §8.5
  (misaligned English items out of 237 per model; Llama3's 73 % improved with chrF++ demonstrations, also when
  shuffled). Used by chapter 06.
- ``ch9_papers`` (chapter 07, cross-lingual debiasing): Table 2 of Peng, Hu, Chai & Søgaard (2025), *Debiasing
  Multilingual LLMs in Cross-lingual Latent Space* (EMNLP; arXiv 2508.17948): CrowS-Pairs bias score of Aya-expanse-8B
  per evaluation language, base and after INLP / SentDebias in the original and the latent space, English as the
  debiasing language (``metric=bias_score``), plus the App. B significance threshold for n = 40; and the qualitative
  findings of Neplenbroek, Bisazza & Fernández (2025, Findings ACL; arXiv 2412.14050) as 1 = "the paper reports
  this direction" (the seed summaries give no numbers). Used by chapter 07.
- ``ch7_thesis``: numbers of thesis chapter 7 (Choenni, Lauscher & Shutova, *The Echoes of Multilinguality: Tracing
  Cultural Value Shifts during LM Fine-tuning*, ACL 2024, arXiv 2405.12744), long format (table, metric, row, lang,
  value): Table 7.3 (agreement % between mT5 small/base/large), Table 7.4 (% unchanged after multilingual vs mean
  monolingual fine-tuning), Table 7.5 (Δ Spearman with WVS country profiles, PBC and Tanzil, signs restored as
  negative where the extracted text lost them), and the numbers stated in the text: Fig 7.2 shift ranges, the 14%
  unique shifts and the TRAK overlaps. Transcribed via the method spec ``ch7_cultural_shifts.md`` §4. Used by
  chapter 05.
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
