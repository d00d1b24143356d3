"""Reading inputs: triplet files (:mod:`.triplets`: load and save; :mod:`.readers`: one reader per file
format; :mod:`.fields`: field names and one record parsed) and BEIR datasets (:mod:`.beir`); every text
file is decoded by :func:`.lines.iter_lines`."""
