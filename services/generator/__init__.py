"""Generator service: the three transition generator champions behind ``POST /v1/progress``."""
