/* mistryd web view: the build page follows a running build's log over Server-Sent Events and then
   shows the final state without a reload; builds are started, retried, rebuilt and cancelled with
   the JSON API; the dashboard refreshes its lists in place. Text from builds is set with
   textContent, or is HTML the server rendered and escaped (a log line: ansi2html on the server,
   see mistryd/web/logview.py); it is never assembled into HTML here. */
(function () {
  "use strict";

  // Replace every [data-swap] section of this page by the one with the same id in `doc`.
  function swapSections(doc, only) {
    var parts = document.querySelectorAll(only || "[data-swap]");
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

  // A write to the API from this page (the login cookie counts as the token; the browser sends
  // Origin, which the server checks). Resolves to the JSON answer, rejects with its error.
  function post(url, body) {
    var options = { method: "POST", credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (answer) {
        if (!r.ok) throw new Error(answer.error || ("HTTP " + r.status));
        return answer;
      });
    });
  }

  function showProblem(id, message) {
    var problem = document.getElementById(id);
    if (!problem) return;
    problem.textContent = message;
    problem.hidden = !message;
  }

  // Start a build (the project page's form, a build page's Rebuild and Retry) and open its page.
  function startBuild(jobsUrl, request, problemId, button) {
    if (button) button.disabled = true;
    showProblem(problemId, "");
    return post(jobsUrl + "?async", request).then(function (answer) {
      window.location.href = "/job/" + encodeURIComponent(request.project) + "/" +
        encodeURIComponent(answer.id);
    }).catch(function (e) {
      showProblem(problemId, e.message);
      if (button) button.disabled = false;
    });
  }

  function parseParams(text) {
    var params = {};
    var lines = text.split("\n");
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i].replace(/\r$/, "");
      if (!line.trim()) continue;
      var eq = line.indexOf("=");
      if (eq <= 0) throw new Error("line " + (i + 1) + " is not key=value: " + line.slice(0, 60));
      var key = line.slice(0, eq).trim();
      if (Object.prototype.hasOwnProperty.call(params, key)) {
        throw new Error("param " + key + " is given twice");
      }
      params[key] = line.slice(eq + 1);
    }
    return params;
  }

  var form = document.getElementById("build-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var request = { project: form.getAttribute("data-project") };
      try {
        request.params = parseParams(form.elements.params.value);
      } catch (e) {
        showProblem("build-problem", e.message);
        return;
      }
      if (form.elements.group.value.trim()) request.group = form.elements.group.value.trim();
      if (form.elements.rebuild.checked) request.rebuild = true;
      startBuild(form.getAttribute("data-url"), request, "build-problem",
                 document.getElementById("build-submit"));
    });
  }

  // Dashboard: refresh the counts and lists every few seconds while the tab is visible.
  var dashboard = document.getElementById("dashboard");
  if (dashboard) {
    var every = (parseFloat(dashboard.getAttribute("data-refresh-seconds")) || 5) * 1000;
    var busy = false;
    setInterval(function () {
      if (busy || document.visibilityState !== "visible") return;
      busy = true;
      fetchPage().then(function (doc) { swapSections(doc); })
        .catch(function () { /* try again next time */ })
        .then(function () { busy = false; });
    }, every);
  }

  var root = document.getElementById("build");
  var log = document.getElementById("log");
  if (!root || !log) return;

  var imageBox = document.getElementById("log-image");
  var imageLines = document.getElementById("log-image-lines");
  var mainLines = document.getElementById("log-lines");
  var follow = document.getElementById("log-follow");
  var times = document.getElementById("log-times");
  var limit = parseInt(root.getAttribute("data-tail-limit"), 10) || 2000;

  // Buttons in the summary (which is swapped in place): one listener for all of them.
  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!(target instanceof HTMLButtonElement)) return;
    if (target.id === "cancel") {
      target.disabled = true;
      showProblem("action-problem", "");
      post(target.getAttribute("data-url")).catch(function (e) {
        showProblem("action-problem", e.message);
        target.disabled = false;
      });
    } else if (target.classList.contains("resubmit")) {
      var request = JSON.parse(target.getAttribute("data-request"));
      if (target.getAttribute("data-rebuild") === "true") request.rebuild = true;
      startBuild(root.getAttribute("data-jobs-url"), request, "action-problem", target);
    }
  });

  // Timestamps on demand: each line carries the epoch milliseconds of its write (data-t).
  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = "0" + n; return n; }
  function stamp(line) {
    var ms = parseInt(line.getAttribute("data-t"), 10);
    if (!ms || line.hasAttribute("data-ts")) return;
    var d = new Date(ms);
    line.setAttribute("data-ts", pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" +
      pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3));
    line.title = (line.title ? line.title + ", " : "") + d.toISOString();
  }
  times.addEventListener("change", function () {
    if (times.checked) log.querySelectorAll(".ln").forEach(stamp);
    log.classList.toggle("show-times", times.checked);
  });

  function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 48; }
  function toBottom() { log.scrollTop = log.scrollHeight; }
  follow.addEventListener("change", function () { if (follow.checked) toBottom(); });
  // Scrolling up to read stops following; scrolling back to the end follows again.
  var programmatic = false;
  log.addEventListener("scroll", function () {
    if (programmatic || root.getAttribute("data-live") !== "true") return;
    follow.checked = atBottom();
  });
  toBottom();

  // Elapsed time, ticking while the build is queued or running.
  function duration(s) {
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  var clock = setInterval(function () {
    var elapsed = document.getElementById("elapsed");
    if (!elapsed || root.getAttribute("data-live") !== "true") return;
    var since = parseFloat(elapsed.getAttribute("data-since"));
    if (since) elapsed.textContent = duration(Math.max(0, Date.now() / 1000 - since));
  }, 1000);

  if (root.getAttribute("data-live") !== "true") { clearInterval(clock); return; }

  // While queued: the queue position from the server every few seconds.
  var queueTimer = setInterval(function () {
    if (root.getAttribute("data-status") !== "queued" || document.visibilityState !== "visible") return;
    fetchPage().then(function (doc) { swapSections(doc, "#summary"); })
      .catch(function () { /* next time */ });
  }, 3000);

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
  // The image build comes first; its section folds once the build's own output starts.
  var inImage = mainLines.childElementCount === 0;

  function lineElement(item) {
    var span = document.createElement("span");
    span.className = "ln" + (item.s ? " ln-" + item.s : "");
    if (item.t) span.setAttribute("data-t", String(item.t));
    if (item.s === "e") span.title = "stderr";
    span.innerHTML = item.h;  // escaped and coloured by the server (logview.py)
    span.appendChild(document.createTextNode("\n"));
    if (times.checked) stamp(span);
    return span;
  }

  function lineCount() { return imageLines.childElementCount + mainLines.childElementCount; }

  function flush() {
    flushTimer = null;
    var stick = follow.checked;
    var start = Math.max(0, pending.length - limit);
    hiddenLines += start;
    var imageFrag = document.createDocumentFragment();
    var mainFrag = document.createDocumentFragment();
    for (var i = start; i < pending.length; i++) {
      var item = pending[i];
      if (inImage && item.s !== "i") {
        inImage = false;
        if (!imageBox.hasAttribute("data-touched")) imageBox.open = false;
      }
      (inImage ? imageFrag : mainFrag).appendChild(lineElement(item));
    }
    pending = [];
    imageLines.appendChild(imageFrag);
    mainLines.appendChild(mainFrag);
    if (imageLines.childElementCount) {
      imageBox.hidden = false;
      if (inImage && !imageBox.hasAttribute("data-touched")) imageBox.open = true;
    }
    var extra = lineCount() - limit;
    while (extra > 0) {  // the oldest first: the image build's, then the build's own
      var from = imageLines.childElementCount ? imageLines : mainLines;
      var n = Math.min(extra, from.childElementCount);
      var range = document.createRange();
      range.setStartBefore(from.firstChild);
      range.setEndAfter(from.children[n - 1]);
      range.deleteContents();
      hiddenLines += n;
      extra -= n;
    }
    document.getElementById("log-image-count").textContent = String(imageLines.childElementCount);
    if (hiddenLines > 0) {
      var note = document.getElementById("log-note");
      note.hidden = false;
      document.getElementById("log-note-text").textContent =
        "Showing the last " + lineCount().toLocaleString() + " lines; " +
        "earlier output is not shown.";
    }
    if (stick) { programmatic = true; toBottom(); programmatic = false; }
  }
  // Once the reader opens or closes the image build's section, it stays as they left it.
  imageBox.querySelector("summary").addEventListener("click", function () {
    imageBox.setAttribute("data-touched", "");
  });

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
    var item;
    try { item = JSON.parse(event.data); } catch (e) { item = null; }
    if (!item || typeof item.h !== "string") return;
    pending.push(item);
    if (flushTimer === null) flushTimer = setTimeout(flush, 50);
  }

  // The server sends `end` after the last line of the log, once the build's record is written,
  // with the final status and BuildInfo: the log shown is whole and the state is final.
  function onEnd(event) {
    done = true;
    source.close();
    clearInterval(clock);
    clearInterval(queueTimer);
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
    follow.checked = false;
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
    source = new EventSource(base + "?format=page&offset=" + lastOffset);
    source.onmessage = onLine;
    source.addEventListener("end", onEnd);
    source.onerror = function () {
      // The browser reconnects by itself (sending Last-Event-ID) unless the server refused the
      // stream; then start a new one from the last line shown.
      if (!done && source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    };
  }

  connect();
})();
