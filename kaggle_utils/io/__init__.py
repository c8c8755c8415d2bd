"""Reading the competition's inputs: its CSVs row by row, a DICOM series ordered in space, a fixed number of
frames of a cached array, and the pipeline's hand-off tables built from them."""
