"""From raw DICOMs to a complete submission: the ensemble, an inference run study by study with its axial
branch, the blend of sagittal and axial rows, routing and the 25 rows of every study."""
