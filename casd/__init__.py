"""casd."""
