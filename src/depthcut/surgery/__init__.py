"""Surgery: edit the real nn.Modules so tensors disappear, and keep configs consistent."""
