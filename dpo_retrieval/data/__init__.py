"""Reading inputs: triplet files (:mod:`.triplets`) and BEIR datasets (:mod:`.beir`)."""
