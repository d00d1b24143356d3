"""Evaluation: metrics over runs (:mod:`.metrics`), run files (:mod:`.runs`) and scoring a model on a
BEIR split (:mod:`.evaluate`)."""
