"""MA-V: the video alpha-matte dataset as a product (format, queries, loaders, preview, evaluation)."""
