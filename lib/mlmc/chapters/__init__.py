"""Chapter drivers: one module per chapter notebook (``01_data_sharing`` -> ``mlmc.chapters.data_sharing``).

A driver wires the kernels of :mod:`mlmc` into the experiments of one chapter (jobs, tables, checks). Drivers
import kernels, never the reverse, so a reader goes notebook -> driver -> kernel.
"""
