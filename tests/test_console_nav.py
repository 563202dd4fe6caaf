"""Every page in the console's navigation opens for the roles it is listed for, and only for them."""

from __future__ import annotations

from flask import url_for

from tests.console_helpers import sign_in
from web.console import NAV


def test_every_navigation_page_opens_for_its_roles_and_is_refused_to_the_others(
    app, client, make_operator, make_merchant
):
    merchant = make_merchant()
    for role in ("admin", "finance", "support", "merchant_staff"):
        _, headers = make_operator(role, merchant if role == "merchant_staff" else None)
        csrf = sign_in(client, headers)
        with app.test_request_context():
            pages = [(url_for(endpoint), roles) for endpoint, _, roles in NAV]
        home = client.get("/console/", follow_redirects=True).get_data(as_text=True)
        for path, roles in pages:
            answer = client.get(path)
            if role in roles:
                assert answer.status_code == 200, (role, path, answer.status_code)
                assert f'href="{path}"' in home, (role, path)
            else:
                assert answer.status_code == 403, (role, path, answer.status_code)
                assert f'href="{path}"' not in home, (role, path)
        client.post("/console/sign-out", data={"csrf_token": csrf})
