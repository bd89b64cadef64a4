"""preftune: preference tuning of language models (SFT, reward models, PPO, DPO and evaluation)."""

__version__ = "0.1.0"
