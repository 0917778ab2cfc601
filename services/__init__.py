"""The four services of the stack (gateway, classifier, generator, frontend).

Each service is a thin FastAPI app: routes (``app.py``), a model holder and one settings
module. The science lives in the shared ``alzprog`` library; ``services.common`` only holds
plumbing the three Python API services share (logging, errors, limits, metrics).
"""
