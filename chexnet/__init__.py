"""Everything the pipeline's commands share: one level deep, imported by the commands, never
importing them.

Nothing runs on import; each module has one job (see README.md, "Architecture").
"""
