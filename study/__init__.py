"""study: a data-efficiency study harness for image classifiers.

This package runs experiments (config, data, models, training, execution, store, CLI).
Importing it does not import torch: the modules that need torch import it themselves, so
`study report` works on a machine that has only the store.
"""

__version__ = "0.1.0"
