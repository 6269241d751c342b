"""Celery task names, in one place: the client, the sweeper and the workers all send by name."""

EMBED_TASK = "fusionq.embed_items"
FUSE_TASK = "fusionq.fuse_items"
LLM_TASKS = {"local": "fusionq.llm_local.score_items", "api": "fusionq.llm_api.score_items"}
SWEEP_TASK = "fusionq.maintenance.sweep"
