"""What every stage shares and no stage owns: the error root, the application table and the enums of kinds.

It imports nothing else of meteovision, so readers, models, the pipeline and workflows can all import it.
"""
