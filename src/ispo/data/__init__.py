"""Reading, validating and identifying genes of AnnData inputs; built-in demo data."""
