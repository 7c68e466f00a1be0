"""The speed room: the bench command (efficiency), the DeepCTR-Torch peer and the step timer."""
