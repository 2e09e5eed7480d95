"""analysis: reads a study's store into tidy pandas DataFrames and answers the researcher's
questions (learning curves, data needed, significance, costs). It never imports torch, so
reports can be regenerated on any machine from a copied database."""

from analysis.load import StudyData, load_study

__all__ = ["StudyData", "load_study"]
