"""The demo: synthetic data sets in the Kaggle layouts (``data``) and the whole job on them (``job``)."""
