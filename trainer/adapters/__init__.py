"""The adapter algorithms, one file per kind (lora, loha, lokr, diff) behind `registry`; DoRA's magnitude in `dora`."""
