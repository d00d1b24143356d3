"""Triplets the training tests share: eight (query, positive, negative) rows with no repeated text."""

TRIPLETS = [
    ("what causes cancer", "mutation causes cancer cells", "the water fiber"),
    ("does sleep increase risk", "sleep and heart disease risk", "vitamin and infants"),
    ("how does insulin work", "insulin signal pathway", "white matter in the brain"),
    ("can a virus cause infection", "virus infection and immune response", "birth weight of infants"),
    ("what is the effect of the drug", "drug dose effects in patients", "the rna of mice"),
    ("is diabetes a risk", "diabetes and insulin risk in women", "fiber and water"),
    ("how do tumor cells grow", "tumor growth and gene expression", "sleep in children"),
    ("does age reduce the level", "age and reduced protein level", "the dna of the virus"),
]
