"""Research scaffolding, outside the vidpress package: training the offline testbed (alignment, LoRA, the
question-answering loss and protocols) and writing its model card. Run from the repository root, e.g.
``python -m testbed.train --help``; the library only loads the result (:mod:`vidpress.testbed.saved`)."""
