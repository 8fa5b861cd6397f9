"""Customer tables for the batch-allocation tests (the tiny model's raw features)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def customer_frame(n: int, seed: int = 0, prefix: str = "c") -> pd.DataFrame:
    """n customers with the raw features of tests/utils/models.py SPEC, ids prefix0..."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": [f"{prefix}{i}" for i in range(n)],
            "recency": rng.integers(1, 13, n),
            "history": rng.gamma(2.0, 100.0, n).round(2),
            "channel": rng.choice(["Phone", "Web", "Multichannel"], n),
        }
    )
