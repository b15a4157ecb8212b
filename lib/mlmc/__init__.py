"""mlmc: the thin package behind the *Multilinguality and Multiculturalism* executable book.

Every chapter notebook imports its compute kernels from here: the synthetic world (`mlmc.world`), the
tiny-model zoo (`mlmc.models`), training and scoring loops, influence, subnetworks, parsing, and the
book runner (`mlmc.book`).
"""

__version__ = "0.1.0"

import warnings as _warnings

# Chapters run headless (papermill, nbval) without ipywidgets: tqdm.auto then falls back to text progress bars,
# which is what we want, so its warning about the missing widget library is noise in every executed notebook.
_warnings.filterwarnings("ignore", message="IProgress not found")
