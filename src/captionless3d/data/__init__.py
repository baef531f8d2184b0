"""Data: the synthetic world (embedded default dataset), readers and the student datamodule."""
