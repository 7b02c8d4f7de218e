"""Image-quality audit: per-image statistics, robust outliers, atypicality and (near-)duplicate groups.

measures.py (what one image's resized pixels say) -> outliers.py (robust z-scores against the
data set) and face_space.py (atypicality against the other half of the data set);
duplicates.py (LSH on the perceptual hash, thumbnails compared); audit.py wires them into Beam.
"""
