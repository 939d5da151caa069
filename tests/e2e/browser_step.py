"""The browser's part of a device sign-in, done with same-origin requests against the real
pages: sign in to the web side with a local password, open the /device link, enter the code,
click Approve (or Deny). Requests carry what a browser sends from the page itself (the CSRF
cookie and token, Origin, Sec-Fetch-Site)."""

from __future__ import annotations

import re

import httpx


class Browser:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base, follow_redirects=False, timeout=30)

    def _token(self, page: httpx.Response) -> str:
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert found, page.text[:500]
        return found.group(1)

    def _post(self, path: str, form: dict, referer: str) -> httpx.Response:
        headers = {"Origin": self.base, "Referer": referer, "Sec-Fetch-Site": "same-origin"}
        return self.http.post(path, data=form, headers=headers)

    def sign_in(self, username: str, password: str) -> None:
        page = self.http.get("/login/?next=/device")
        form = {"username": username, "password": password, "next": "/device",
                "csrfmiddlewaretoken": self._token(page)}  # fmt: skip
        done = self._post("/login/", form, self.base + "/login/")
        assert done.status_code == 302 and "sessionid" in self.http.cookies, done.text[:500]

    def decide(self, user_code: str, action: str = "approve") -> httpx.Response:
        link = f"/device?user_code={user_code}"
        page = self.http.get(link)
        assert page.status_code == 200, page.status_code
        form = {"user_code": user_code, "csrfmiddlewaretoken": self._token(page)}
        confirm = self._post("/device", form, self.base + link)
        assert confirm.status_code == 200, confirm.text[:500]
        form = {"user_code": user_code, "action": action,
                "csrfmiddlewaretoken": self._token(confirm)}  # fmt: skip
        return self._post("/device", form, self.base + "/device")
