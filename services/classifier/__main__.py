"""``python -m services.classifier``: run the classifier service in the foreground (settings from the environment)."""

from services.classifier.app import main

main()
