"""Training glue: the LightningModule and learning-rate schedule."""
