"""``tether dashboard``: one live page of every run, server, GPU and dollar.

:mod:`.snapshot` turns one observation (the same core calls as ``tether status`` and ``tether progress``) into the
page's JSON document; :mod:`.server` serves the page on 127.0.0.1 behind a random token and refreshes the snapshot
in one background poller shared by every open page; ``static/`` holds the page, its script and its style (no CDN).
"""
