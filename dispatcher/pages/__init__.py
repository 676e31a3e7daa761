"""The people's pages: what end users open in a browser, served by the API process itself.

* ``/p/{token}``: the preference centre, at a signed per-user link
  (``POST /v1/users/{id}/preference-link``); see :mod:`dispatcher.pages.routes`.
* ``/inbox`` and ``/pages/inbox.js``: the in-app feed, live, as a page and as the
  ``<dispatcher-inbox>`` web component an app can embed.
* The unsubscribe page of :mod:`dispatcher.api.unsubscribe` is rendered here too.

Server-rendered Jinja2 (``templates/``) with a few KB of plain script and CSS (``static/``),
messages in ``messages/<lang>.json`` (en, ko), all package data: nothing is fetched from
anywhere but this server.
"""
