"""``python -m services.gateway``: run the gateway service in the foreground (settings from the environment)."""

from services.gateway.app import main

main()
