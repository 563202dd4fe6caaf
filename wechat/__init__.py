"""WeChat platform adapters — a leaf package that imports nothing of this project.

Owns: WeChat Pay APIv3 (``pay.PayClient``: one signed ``_request``; errors mapped
to typed ``errors`` with ``retryable`` / ``outcome_unknown``), callback and
response verification (``notifications``; key chosen by ``Wechatpay-Serial`` from
``keys.VerifierKeys``, public-key and certificate mode at once), the typed
transaction and refund notice every payment resource or query answer is parsed
into once (``transactions``; a bad shape is ``MalformedResource``), v2 cash red
packets (``redpack``; XML only through defusedxml), mini-program login / OA OAuth /
shared tokens / card signatures (``mp``), bill integrity (``bills``), and building
every client from plain settings (``setup.build_wechat``). The local WeChat
simulator lives apart in ``sim`` (like stripe-mock beside stripe-python): only
the application imports it, and only in simulator mode.

Invariants: the bytes we sign are the bytes we send; a 2xx without a valid WeChat
signature is forged; a timeout, 5xx, unparseable answer or unknown code is
*unknown* (query, then retry with the same idempotency key) and never "failed".
Configuration arrives as constructor arguments; nothing here reads the app config.
"""
