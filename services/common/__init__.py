"""Plumbing shared by the gateway, classifier and generator: JSON logs with a request id,
the one error shape, the request body limit, admission control, metrics and the internal
wire format of canonical images. No science here: that lives in ``alzprog``."""
