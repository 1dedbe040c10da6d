"""The web pages driven like a browser with JavaScript off (GET a form, send it back with its CSRF token,
follow the 303s, keep the cookies), for the tests of the pages against real server processes; and a small
DOM, enough to find elements by id, class and attribute."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx

from tests.support import ADMIN_PASSWORD, Server

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# --- a small DOM --------------------------------------------------------------------------------------------


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return " ".join("".join(c if isinstance(c, str) else c.text() for c in self.children).split())

    def walk(self) -> Iterator[Node]:
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.walk()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str | None) -> list[Node]:
        def ok(n: Node) -> bool:
            if tag is not None and n.tag != tag:
                return False
            if cls is not None and cls not in n.classes:
                return False
            for k, v in attrs.items():
                name = k.rstrip("_").replace("_", "-")
                if v is None and name not in n.attrs or v is not None and n.attrs.get(name) != v:
                    return False
            return True

        return [n for n in self.walk() if ok(n)]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str | None) -> Node:
        found = self.find_all(tag, cls, **attrs)
        assert found, f"no <{tag or '*'}> with class={cls} {attrs}"
        return found[0]

    def by_id(self, id_: str) -> Node:
        return self.find(id=id_)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        n: Node | None = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data: str) -> None:
        self.cur.children.append(data)


def dom(html_text: str) -> Node:
    p = _Parser()
    p.feed(html_text)
    p.close()
    return p.root


# --- a browser without JavaScript ------------------------------------------------------------------------


def client(server: Server) -> httpx.Client:
    """An HTTP client that asks for pages (and follows no redirect by itself)."""
    return httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=60,
                        headers={"Accept": "text/html"})


class Browser:
    """A browser with JavaScript off; every page it gets is checked against the content security policy
    (:func:`assert_strict_html`).  ``c`` is its client, for requests sent as they are."""

    def __init__(self, server: Server) -> None:
        self.c = client(server)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.c.close()

    def sign_in(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
        r = self.c.post("/ui/login", data={"username": username, "password": password, **self.signin_token()})
        assert r.status_code == 303, r.text

    def signin_token(self) -> dict[str, str]:
        """The sign-in page's pre-session token (its cookie is kept by the client), as a form field."""
        return {"signin_token": hidden(self.get("/ui/login").text, "signin_token")}

    def get(self, path: str, status: int = 200, **params: str) -> httpx.Response:
        r = self.c.get(path, params=params or None)
        assert r.status_code == status, (path, r.status_code, r.text[:3000])
        return _checked(r)

    def page(self, path: str, status: int = 200, **params: str) -> Node:
        return dom(self.get(path, status, **params).text)

    def csrf(self, page_path: str) -> str:
        """The CSRF token in the forms of the page ``page_path``."""
        return hidden(self.get(page_path).text, "csrf")

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf_from: str | None = None
             ) -> httpx.Response:
        """POST form data; with ``csrf_from`` (a page's path), the CSRF token of that page goes along."""
        body = dict(data or {})
        if csrf_from is not None:
            body["csrf"] = self.csrf(csrf_from)
        return _checked(self.c.post(path, data=body))

    def submit(self, page_path: str, form_id: str, changes: dict[str, str | None] | None = None,
               ) -> httpx.Response:
        """Fill in the form ``form_id`` of the page as a browser sends it: its inputs' values (checked
        boxes only, selected options), changed by ``changes`` (None: unchecked/removed)."""
        form = self.page(page_path).by_id(form_id)
        data: dict[str, str] = {}
        for el in form.walk():
            name = el.attrs.get("name")
            if not name or "disabled" in el.attrs:
                continue
            if el.tag == "input":
                if el.attrs.get("type") == "checkbox":
                    if "checked" in el.attrs:
                        data[name] = el.attrs.get("value", "on")
                else:
                    data[name] = el.attrs.get("value", "")
            elif el.tag == "select":
                chosen = [o for o in el.find_all("option") if "selected" in o.attrs] or el.find_all("option")[:1]
                data[name] = chosen[0].attrs.get("value", "") if chosen else ""
        for k, v in (changes or {}).items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v
        return _checked(self.c.post(form.attrs["action"], data=data))

    def follow(self, r: httpx.Response) -> httpx.Response:
        """The page a 303 sends the browser to."""
        assert r.status_code == 303, (r.status_code, r.text[:3000])
        return self.get(r.headers["location"].split("#")[0])

    def follow_page(self, r: httpx.Response) -> Node:
        return dom(self.follow(r).text)


def _checked(r: httpx.Response) -> httpx.Response:
    if "text/html" in r.headers.get("content-type", ""):
        assert_strict_html(r.text)
    return r


def assert_strict_html(text: str) -> None:
    """What the content security policy would refuse: inline script or style, event handler attributes,
    anything from another origin."""
    assert "<script>" not in text and not re.search(r"<script(?![^>]*\bsrc=\"/static/)", text), "inline script"
    assert "style=" not in text, "inline style attribute"
    assert not re.search(r"\son[a-z]+=", text), "event handler attribute"
    assert not re.search(r"(src|href|action)=\"(https?:)?//", text), "an external reference"


# --- reading pages ------------------------------------------------------------------------------------------


def hidden(page: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert m, f"no hidden {name} field"
    return html.unescape(m.group(1))


def input_value(page: str, name: str) -> str:
    """The value of the form field ``name`` (the pages' inputs have the id f-<name>)."""
    m = re.search(rf'id="f-{name}"[^>]*?value="([^"]*)"', page)
    assert m, f"no value of the {name} field"
    return html.unescape(m.group(1))


def field_error(page: str, name: str) -> str:
    m = re.search(rf'<p class="error" id="e-{name}">([^<]*)</p>', page)
    assert m, f"no message next to the {name} field"
    return html.unescape(m.group(1))


def error_of(page: Node, field_id: str) -> str:
    """The message shown next to the input ``field_id`` (its aria-describedby)."""
    el = page.by_id(field_id)
    assert el.attrs.get("aria-invalid") == "true", f"{field_id} is not marked invalid"
    return page.by_id(el.attrs["aria-describedby"]).text()


def no_csrf_refused(b: Browser, path: str, data: dict[str, str] | None = None) -> None:
    r = b.c.post(path, data=data or {})
    assert r.status_code == 403, (path, r.status_code)
    r = b.c.post(path, data={**(data or {}), "csrf": "forged-token"})
    assert r.status_code == 403, (path, r.status_code)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
