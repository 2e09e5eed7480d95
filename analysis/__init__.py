"""analysis: reads a study's store into tidy pandas DataFrames and answers the researcher's
questions (learning curves, data needed, significance, costs). It never imports torch, so
reports can be regenerated on any machine from a copied database.

Modules, one job each: ``load`` (store -> DataFrames), ``curves`` (means, fits, bands),
``efficiency`` (images needed for a target, ratios, data-efficiency score), ``stats`` (paired
comparisons, McNemar, Friedman, Holm, power), ``costs`` (model and training costs),
``confusion`` (confusion matrices), ``sanity`` (warnings), ``analyse`` (all of them at once).
"""

from analysis.analyse import StudyAnalysis, analyse
from analysis.load import StudyData, load_study

__all__ = ["StudyAnalysis", "StudyData", "analyse", "load_study"]
