"""The embedded default: a tiny trained Wan 2.1 model of moving digits, its codec, demo and trainer."""
