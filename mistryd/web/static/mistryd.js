/* mistryd web view, the only script: the build page follows a running build's log over
   Server-Sent Events and then shows the final state without a reload; the dashboard refreshes its
   lists in place. Text from builds is only ever set with textContent or comes inside HTML the
   server rendered (and escaped); it is never assembled into HTML here. */
(function () {
  "use strict";

  // Replace every [data-swap] section of this page by the one with the same id in `doc`.
  function swapSections(doc) {
    var parts = document.querySelectorAll("[data-swap]");
    for (var i = 0; i < parts.length; i++) {
      var next = doc.getElementById(parts[i].id);
      if (next) parts[i].replaceWith(document.importNode(next, true));
    }
  }

  function fetchPage() {
    return fetch(window.location.href, { headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) { return new DOMParser().parseFromString(html, "text/html"); });
  }

  // Dashboard: refresh the counts and lists every few seconds while the tab is visible.
  var dashboard = document.getElementById("dashboard");
  if (dashboard) {
    var every = (parseFloat(dashboard.getAttribute("data-refresh-seconds")) || 5) * 1000;
    var busy = false;
    setInterval(function () {
      if (busy || document.visibilityState !== "visible") return;
      busy = true;
      fetchPage().then(swapSections).catch(function () { /* try again next time */ })
        .then(function () { busy = false; });
    }, every);
  }

  var root = document.getElementById("build");
  var log = document.getElementById("log");
  if (!root || !log) return;

  var limit = parseInt(root.getAttribute("data-tail-limit"), 10) || 2000;
  log.scrollTop = log.scrollHeight;
  if (root.getAttribute("data-live") !== "true") return;

  var logUrl = root.getAttribute("data-log-url");
  var base = logUrl.split("?")[0];
  // Byte offset after the last line shown: the stream resumes here and nothing at or before it
  // is appended twice, whatever the server or a reconnect replays.
  var lastOffset = parseInt(new URLSearchParams(logUrl.split("?")[1] || "").get("offset"), 10) || 0;
  var pending = [];
  var flushTimer = null;
  var hiddenLines = 0;
  var source = null;
  var done = false;

  function flush() {
    flushTimer = null;
    var atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
    var start = Math.max(0, pending.length - limit);
    hiddenLines += start;
    var frag = document.createDocumentFragment();
    for (var i = start; i < pending.length; i++) {
      var span = document.createElement("span");
      span.textContent = pending[i] + "\n";
      frag.appendChild(span);
    }
    pending = [];
    log.appendChild(frag);
    var extra = log.childElementCount - limit;
    if (extra > 0) {
      var range = document.createRange();
      range.setStartBefore(log.firstChild);
      range.setEndAfter(log.children[extra - 1]);
      range.deleteContents();
      hiddenLines += extra;
    }
    if (hiddenLines > 0) {
      var note = document.getElementById("log-note");
      note.hidden = false;
      document.getElementById("log-note-text").textContent =
        "Showing the last " + log.childElementCount.toLocaleString() + " lines; " +
        "earlier output is not shown.";
    }
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function setState(status) {
    var badge = document.querySelector("#state .status");
    if (!badge) return;
    badge.textContent = status;
    badge.className = "status s-" + status;
    root.setAttribute("data-status", status);
  }

  function onLine(event) {
    var offset = parseInt(event.lastEventId, 10);
    if (!isNaN(offset)) {
      if (offset <= lastOffset) return;
      lastOffset = offset;
    }
    if (root.getAttribute("data-status") === "queued") {
      setState("running");
      var waiting = document.getElementById("log-waiting");
      if (waiting) waiting.hidden = true;
    }
    pending.push(event.data);
    if (flushTimer === null) flushTimer = setTimeout(flush, 50);
  }

  // The server sends `end` after the last line of the log, once the build's record is written,
  // with the final status and BuildInfo: the log shown is whole and the state is final.
  function onEnd(event) {
    done = true;
    source.close();
    if (flushTimer !== null) { clearTimeout(flushTimer); flush(); }
    var end = {};
    try { end = JSON.parse(event.data) || {}; } catch (e) { /* keep the page as it is */ }
    if (end.status) setState(end.status);
    if (end.exit_code !== undefined) {
      var exitCode = document.getElementById("exit-code");
      if (exitCode) exitCode.textContent = end.exit_code === null ? "\u2014" : String(end.exit_code);
    }
    ["log-live", "log-waiting"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el) el.hidden = true;
    });
    root.setAttribute("data-live", "false");
    showFinished();
  }

  // The finished build's summary and artifacts, rendered by the server, swapped in place.
  function showFinished() {
    fetchPage()
      .then(function (doc) {
        swapSections(doc);
        document.title = doc.title;
      })
      .catch(function () { /* the state is shown; a reload shows the rest */ });
  }

  function connect() {
    source = new EventSource(base + "?offset=" + lastOffset);
    source.onmessage = onLine;
    source.addEventListener("end", onEnd);
    source.onerror = function () {
      // The browser reconnects by itself (sending Last-Event-ID) unless the server refused the
      // stream; then start a new one from the last line shown.
      if (!done && source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    };
  }

  // Cancel: the server ends the build; the log stream's `end` event then shows the new state.
  var cancel = document.getElementById("cancel");
  if (cancel) {
    cancel.addEventListener("click", function () {
      cancel.disabled = true;
      fetch(cancel.getAttribute("data-url"), { method: "POST", credentials: "same-origin" })
        .then(function (r) {
          if (r.ok) return;
          return r.json().then(function (body) { throw new Error(body.error || ("HTTP " + r.status)); });
        })
        .catch(function (e) {
          var problem = document.getElementById("cancel-problem");
          problem.textContent = e.message;
          problem.hidden = false;
          cancel.disabled = false;
        });
    });
  }

  connect();
})();
