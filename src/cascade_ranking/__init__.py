"""cascade-ranking: train multi-stage cascade ranking systems (retrieval -> pre-ranking -> ranking) as one network."""

__version__ = "0.1.0"
