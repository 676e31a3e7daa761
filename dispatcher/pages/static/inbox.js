// <dispatcher-inbox>: a user's in-app feed, live. Plain script, no dependencies.
//
// In an app's own page:
//   <script src="https://notify.example.com/pages/inbox.js" defer></script>
//   <dispatcher-inbox lang="ko"></dispatcher-inbox>
//   <script>document.querySelector("dispatcher-inbox").token = userTokenFromYourBackend;</script>
// (the dispatcher must list the app's origin in DISPATCHER_CORS_ORIGINS). Attributes:
//   server              the dispatcher's URL (default: where this script came from)
//   user                the user id (default: the token's "sub")
//   lang                en or ko (default: the page's lang)
//   token-from-fragment read the token from the page's #token=… (the /inbox page)
//   show-settings       a button that opens the user's preference centre
//
// The user token only ever travels in an Authorization header. Live updates come over
// EventSource, which can't send headers: it opens the stream with a short-lived stream token
// (POST …/stream-token) and mints a new one each time it reconnects.
"use strict";
(() => {
  const scriptOrigin = document.currentScript ? new URL(document.currentScript.src).origin : location.origin;
  const PAGE_SIZE = 30;
  const RETRY_MAX_MS = 30000;

  function tokenSubject(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes)).sub || "";
    } catch (error) {
      return "";
    }
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === false || value === null || value === undefined) continue;
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  class DispatcherInbox extends HTMLElement {
    constructor() {
      super();
      this._token = "";
      this._entries = new Map(); // id -> entry, in feed order
      this._unread = 0;
      this._cursor = null;
      this._messages = {};
      this._source = null;
      this._retry = 1000;
      this._connected = false;
      this._seq = 0; // live events seen: a list fetched while one came in is fetched again
      this.attachShadow({mode: "open"});
    }

    get server() { return (this.getAttribute("server") || scriptOrigin).replace(/\/+$/, ""); }
    get lang() { return this.getAttribute("lang") || document.documentElement.lang || "en"; }
    get user() { return this.getAttribute("user") || tokenSubject(this._token); }
    set token(value) { this._token = value || ""; if (this.isConnected) this._start(); }

    async connectedCallback() {
      if (this.hasAttribute("token-from-fragment")) {
        const found = new URLSearchParams(location.hash.slice(1)).get("token");
        if (found) {
          this._token = found;
          history.replaceState(null, "", location.pathname + location.search); // out of the address bar
        }
      }
      await this._loadMessages();
      this._render();
      this._start();
    }

    disconnectedCallback() { this._close(); }

    t(key, values) {
      let text = this._messages[key] || key;
      for (const [name, value] of Object.entries(values || {})) text = text.replace(`{${name}}`, value);
      return text;
    }

    async _loadMessages() {
      const lang = this.lang.split("-")[0].toLowerCase() === "ko" ? "ko" : "en";
      try {
        const response = await fetch(`${this.server}/pages/messages/${lang}.json`);
        this._messages = await response.json();
      } catch (error) {
        this._messages = {};
      }
    }

    _render() {
      const root = this.shadowRoot;
      root.replaceChildren();
      root.append(el("link", {rel: "stylesheet", href: `${this.server}/pages/pages.css`}));
      this._badge = el("span", {class: "badge", "data-count": "0", text: "0"});
      this._badgeLabel = el("span", {class: "visually-hidden", text: this.t("inbox.unread", {count: 0})});
      this._markAll = el("button", {type: "button", class: "link-button mark-all", text: this.t("inbox.mark_all")});
      this._markAll.addEventListener("click", () => this._readAll());
      const heading = el("h2", {id: "inbox-heading"}, this.t("inbox.title"), this._badge, this._badgeLabel);
      this._badge.setAttribute("aria-hidden", "true");
      const head = el("div", {class: "inbox-head"}, heading, this._markAll);
      if (this.hasAttribute("show-settings")) {
        const settings = el("button", {type: "button", class: "link-button", text: this.t("inbox.settings")});
        settings.addEventListener("click", () => this._openSettings());
        head.append(settings);
      }
      this._list = el("ul", {class: "feed", "aria-labelledby": "inbox-heading"});
      this._problem = el("p", {class: "problem", role: "alert", hidden: true});
      this._more = el("button", {type: "button", class: "link-button", hidden: true, text: this.t("inbox.more")});
      this._more.addEventListener("click", () => this._load(this._cursor));
      this._live = el("span", {class: "live", role: "status"});
      this._announce = el("span", {class: "visually-hidden", "aria-live": "polite"});
      const foot = el("div", {class: "foot"}, this._more, this._live, this._announce);
      root.append(el("section", {class: "inbox", "aria-labelledby": "inbox-heading"},
                     head, this._problem, this._list, foot));
    }

    _start() {
      if (!this._list) return;
      this._close();
      if (!this._token || !this.user) {
        this._showProblem(this.t("inbox.signin"));
        return;
      }
      this._entries.clear();
      this._load(null);
      this._connect();
    }

    _url(path) {
      return `${this.server}/v1/users/${encodeURIComponent(this.user)}${path}`;
    }

    async _call(method, path) {
      const response = await fetch(this._url(path), {
        method, headers: {Authorization: `Bearer ${this._token}`}, referrerPolicy: "no-referrer"});
      if (response.status === 401 || response.status === 403) {
        this._close();
        this._showProblem(this.t("inbox.denied"));
        throw new Error("denied");
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      return response.json();
    }

    async _load(cursor) {
      const seq = this._seq;
      const query = `?limit=${PAGE_SIZE}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");
      try {
        const page = await this._call("GET", `/notifications${query}`);
        if (!cursor && seq !== this._seq) return this._load(null);
        if (!cursor) this._entries.clear();
        for (const item of page.items) this._entries.set(item.id, item);
        this._cursor = page.next_cursor;
        this._setUnread(page.unread_count);
        this._problem.hidden = true;
        this._draw();
      } catch (error) {
        if (error.message !== "denied") this._showProblem(this.t("inbox.failed"));
      }
    }

    async _connect() {
      if (!this._token) return;
      let token;
      try {
        token = (await this._call("POST", "/notifications/stream-token")).token;
      } catch (error) {
        if (error.message !== "denied") this._reconnectLater();
        return;
      }
      const source = new EventSource(this._url(`/notifications/stream?stream_token=${encodeURIComponent(token)}`));
      this._source = source;
      source.addEventListener("open", () => {
        if (this._connected === null) this._load(null); // events may have been missed while away
        this._connected = true;
        this._retry = 1000;
        this._live.textContent = this.t("inbox.live");
        this.dispatchEvent(new CustomEvent("inbox-live"));
      });
      source.addEventListener("notification", (event) => { this._seq++; this._onNotification(JSON.parse(event.data)); });
      source.addEventListener("read", (event) => { this._seq++; this._onRead(JSON.parse(event.data).id); });
      source.addEventListener("read_all", () => { this._seq++; this._onReadAll(); });
      source.addEventListener("error", () => {
        // The browser would retry with the same (soon expired) token: mint a fresh one instead.
        source.close();
        if (this._source === source) this._reconnectLater();
      });
    }

    _reconnectLater() {
      this._connected = null;
      this._live.textContent = this.t("inbox.reconnecting");
      clearTimeout(this._timer);
      this._timer = setTimeout(() => this._connect(), this._retry);
      this._retry = Math.min(this._retry * 2, RETRY_MAX_MS);
    }

    _close() {
      clearTimeout(this._timer);
      if (this._source) this._source.close();
      this._source = null;
    }

    _onNotification(event) {
      const known = this._entries.get(event.id);
      if (known && known.version > event.version) return;
      if (!known || known.read) this._setUnread(this._unread + 1);
      const entry = {...(known || {created_at: new Date().toISOString()}), ...event, read: false,
                     updated_at: new Date().toISOString()};
      // Newest first: a new entry goes on top; an update stays where it is.
      const entries = known ? [...this._entries.values()].map((e) => (e.id === entry.id ? entry : e))
                            : [entry, ...this._entries.values()];
      this._entries = new Map(entries.map((e) => [e.id, e]));
      if (!known) this._announce.textContent = this.t("inbox.new", {title: entry.title});
      this._draw();
    }

    _onRead(id) {
      const entry = this._entries.get(id);
      if (entry && !entry.read) {
        entry.read = true;
        this._setUnread(this._unread - 1);
        this._draw();
      }
    }

    _onReadAll() {
      for (const entry of this._entries.values()) entry.read = true;
      this._setUnread(0);
      this._draw();
    }

    async _read(id) {
      try {
        const answer = await this._call("POST", `/notifications/${encodeURIComponent(id)}/read`);
        const entry = this._entries.get(id);
        if (entry) entry.read = true;
        this._setUnread(answer.unread_count);
        this._draw();
      } catch (error) { /* the problem line says it */ }
    }

    async _readAll() {
      try {
        await this._call("POST", "/notifications/read-all");
        this._onReadAll();
      } catch (error) { /* the problem line says it */ }
    }

    async _openSettings() {
      try {
        const link = await this._call("POST", "/preference-link");
        location.assign(link.url);
      } catch (error) { /* the problem line says it */ }
    }

    _setUnread(count) {
      this._unread = Math.max(0, count);
      this._badge.textContent = String(this._unread);
      this._badge.dataset.count = String(this._unread);
      this._badgeLabel.textContent = this.t("inbox.unread", {count: this._unread});
      this._markAll.disabled = this._unread === 0;
      this.dispatchEvent(new CustomEvent("inbox-unread", {detail: {count: this._unread}}));
    }

    _showProblem(text) {
      this._problem.textContent = text;
      this._problem.hidden = false;
    }

    _draw() {
      const items = [...this._entries.values()].map((entry) => this._item(entry));
      if (!items.length) items.push(el("li", {class: "empty", text: this.t("inbox.empty")}));
      this._list.replaceChildren(...items);
      this._more.hidden = !this._cursor;
    }

    _item(entry) {
      const when = new Date(entry.updated_at || entry.created_at);
      const meta = el("div", {class: "meta"},
        entry.state ? el("span", {class: `state state-${entry.state}`, text: entry.state}) : null,
        isNaN(when) ? null : el("time", {datetime: when.toISOString(),
                                         text: when.toLocaleString(this.lang, {dateStyle: "medium", timeStyle: "short"})}));
      const body = el("div", {},
        el("h3", {}, entry.read ? null : el("span", {class: "visually-hidden", text: `${this.t("inbox.unread_label")}: `}),
           entry.title),
        el("p", {text: entry.body}), meta);
      let mark = null;
      if (!entry.read) {
        mark = el("button", {type: "button", class: "link-button mark", text: this.t("inbox.mark_one"),
                             "aria-label": this.t("inbox.mark_one_label", {title: entry.title})});
        mark.addEventListener("click", () => this._read(entry.id));
      }
      return el("li", {class: `entry${entry.read ? "" : " unread"}`, "data-id": entry.id, "data-state": entry.state || ""},
                el("span", {class: "dot", "aria-hidden": "true"}), body, mark);
    }
  }

  if (!customElements.get("dispatcher-inbox")) customElements.define("dispatcher-inbox", DispatcherInbox);
})();
