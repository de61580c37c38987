"""Keyword spotting: data, audio front end, models, training, streaming detector. Not built yet."""
