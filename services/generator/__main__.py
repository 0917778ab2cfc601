"""``python -m services.generator``: run the generator service in the foreground (settings from the environment)."""

from services.generator.app import main

main()
