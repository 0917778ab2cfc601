"""alzprog: Alzheimer's MRI staging and progression synthesis.

The one library that training, evaluation and every service import.
"""

__version__ = "0.1.0"
