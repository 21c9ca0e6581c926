defs = None
