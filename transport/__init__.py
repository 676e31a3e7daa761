"""Shared transport: what both provider adapters (``channels/``) and queue adapters
(``dispatcher/queue/``) speak over the wire, so that no adapter imports another.

* :mod:`transport.aws`: one small async AWS client (botocore credentials, endpoints and SigV4
  over :mod:`transport.pool`) for SES, SNS and SQS.
* :mod:`transport.pool`: a light HTTP/1.1 client, a keep-alive pool per origin, for the
  providers' APIs (SES, SNS, SQS, FCM).
* :mod:`transport.http`: HTTP details every client needs (``Retry-After``).

It imports nothing from ``dispatcher`` or ``channels``.
"""
