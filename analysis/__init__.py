"""analysis: reads a study's store into tidy pandas DataFrames and answers the researcher's
questions (learning curves, data needed, significance, costs). It never imports torch, so
reports can be regenerated on any machine from a copied database.

Modules, one job each: ``load`` (store -> DataFrames), ``curves`` (means, fits, bands),
``efficiency`` (images needed for a target, ratios, data-efficiency score), ``stats`` (paired
comparisons, McNemar, Friedman, Holm, power), ``costs`` (model and training costs),
``confusion`` (confusion matrices), ``sanity`` (warnings), ``study_analysis`` (all of them at
once: ``analyse``).
"""

from analysis.load import StudyData, load_study

__all__ = ["StudyAnalysis", "StudyData", "analyse", "load_study"]


def __getattr__(name: str):
    # scipy's optimisers and tests load only when analysing: `study status` needs just `load`.
    if name in ("analyse", "StudyAnalysis"):
        from analysis import study_analysis

        return getattr(study_analysis, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
