"""Retrieval: encoding (:mod:`.encoding`), the FAISS index (:mod:`.index`, the only module that imports
faiss), building one from a corpus (:mod:`.build`), the encoding cache (:mod:`.cache`) and search
(:mod:`.search`, which evaluation and mining both call)."""
