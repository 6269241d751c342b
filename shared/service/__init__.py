"""The service: what the queues do, as plain functions over a database session.

``submit`` stores a job; ``embed``, ``llm`` and ``aggregate`` are the three stages the Celery
tasks call; ``policy`` holds the serving rules (modes, tiers, budgets); ``sweeper`` re-sends lost
work; ``training`` fits and publishes classifiers. Imports the store and the science, never
Celery or the interfaces.
"""
