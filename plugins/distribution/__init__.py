"""Distribution plugins: moving images between registries and the content store."""
