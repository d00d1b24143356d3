"""The ``compare`` experiment: resumable stages (:mod:`.stages`), the pipeline (:mod:`.compare`),
paired statistics (:mod:`.stats`), the report (:mod:`.report`) and its plots (:mod:`.plots`)."""
