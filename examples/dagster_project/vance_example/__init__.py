"""The VanceAI example project (a `dg` project): its definitions are the `defs/` folder."""
