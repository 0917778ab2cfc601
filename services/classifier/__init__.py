"""Classifier service: the stage classifier champion behind ``POST /v1/classify``."""
