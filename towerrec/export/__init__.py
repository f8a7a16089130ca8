"""Export: the ScaNN index, SavedModels in the TF Serving layout, versioned publishing."""
