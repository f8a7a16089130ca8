"""The CLI and the steps that chain the other packages: add-items, retrain."""
