"""How good it is: out-of-fold inference and its oracle on true keypoints, the scores, the localisers' errors,
and the pictures of the notebooks."""
