"""fusionq common code: settings, database, encoders, fusion model, client.

Every process (CLI, client, Celery workers) imports from here. Heavy libraries (torch,
transformers) are imported lazily inside the modules that need them, so importing this
package never touches CUDA.
"""

__version__ = "0.1.0"
