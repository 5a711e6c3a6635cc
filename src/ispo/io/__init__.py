"""Input and output: opening inputs, vocabularies, gene ids, validation, demo data, shards and
atomic writers."""
