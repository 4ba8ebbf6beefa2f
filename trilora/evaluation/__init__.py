"""Evaluating adapters on real base models: FID, NFID, KID and CLIP score, `trilora evaluate` and `compare`."""
