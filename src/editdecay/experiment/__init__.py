"""Experiments: grid configs -> content-addressed stage graphs -> a resumable SQLite results store."""
