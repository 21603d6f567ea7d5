"""Dataset builders (they may fit models): RankTower's equal-frequency bucketisation, KuaiRand-Pure, ..."""

__all__: list[str] = []
