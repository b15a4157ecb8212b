"""mlmc: the thin package behind the *Multilinguality and Multiculturalism* executable book.

Every chapter notebook imports its compute kernels from here: the synthetic world (`mlmc.world`), the
tiny-model zoo (`mlmc.models`), training and scoring loops, influence, subnetworks, parsing, and the
book runner (`mlmc.book`).
"""

__version__ = "0.1.0"
