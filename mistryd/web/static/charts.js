/* mistryd web view: the charts, drawn with the vendored uPlot (uplot.min.js) from JSON the server
   put in the page (<script type="application/json" id="<chart>-data">). The project page: how
   long the recent builds took, one bar per build coloured by its outcome. The dashboard: the
   cache hit rate and the queue depth over the last day. */
(function () {
  "use strict";
  if (typeof uPlot === "undefined") return;

  var css = getComputedStyle(document.documentElement);
  function colour(name, fallback) { return css.getPropertyValue(name).trim() || fallback; }
  var OK = colour("--ok", "#176b2c");
  var BAD = colour("--bad", "#a3161b");
  var WAIT = colour("--wait", "#4b5563");
  var LINK = colour("--link", "#0b5cad");
  var RUN = colour("--run", "#8a5a00");
  var AXIS = { stroke: colour("--muted", "#6a737d"), grid: { stroke: colour("--line", "#e1e4e8") },
               ticks: { stroke: colour("--line", "#e1e4e8") } };

  function data(id) {
    var el = document.getElementById(id + "-data");
    return el ? JSON.parse(el.textContent) : null;
  }

  function seconds(v) {
    if (v == null) return "—";
    if (v < 90) return v.toFixed(v < 10 ? 1 : 0) + " s";
    if (v < 5400) return Math.floor(v / 60) + " min " + Math.round(v % 60) + " s";
    return (v / 3600).toFixed(1) + " h";
  }

  var charts = [];
  function draw(el, opts, values) {
    opts.width = Math.max(200, el.clientWidth);
    opts.height = opts.height || 200;
    charts.push({ el: el, plot: new uPlot(opts, values, el) });
  }
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      charts.forEach(function (c) { c.plot.setSize({ width: Math.max(200, c.el.clientWidth), height: c.plot.height }); });
    }, 150);
  });

  // The project page: durations of the recent builds, a bar each, one series per outcome.
  var durations = document.getElementById("durations");
  var d = durations && data("durations");
  if (d && d.x.length) {
    var bars = uPlot.paths.bars({ size: [0.7, 40] });
    var series = function (label, values, fill) {
      return { label: label, stroke: fill, fill: fill, paths: bars, points: { show: false },
               value: function (u, v) { return seconds(v); } };
    };
    draw(durations, {
      scales: { x: { time: false, range: function (u, min, max) { return [min - 0.5, max + 0.5]; } } },
      axes: [
        Object.assign({ label: "build (oldest → newest)", values: function (u, ticks) {
          return ticks.map(function (t) { return Number.isInteger(t) ? String(t) : ""; });
        } }, AXIS),
        Object.assign({ values: function (u, ticks) { return ticks.map(seconds); }, size: 70 }, AXIS),
      ],
      series: [
        { label: "build", value: function (u, i) {
          if (i == null || !d.ids[i - 1]) return "—";
          return "#" + i + " " + d.ids[i - 1].slice(0, 12) + " · " + d.statuses[i - 1];
        } },
        series("succeeded", d.succeeded, OK),
        series("failed", d.failed, BAD),
        series("other", d.other, WAIT),
      ],
      hooks: {
        // a click on a bar opens that build
        ready: [function (u) {
          u.over.addEventListener("click", function () {
            var i = u.cursor.idx;
            if (i != null && d.ids[i]) {
              window.location.href = "/job/" + encodeURIComponent(d.project) + "/" + d.ids[i];
            }
          });
        }],
      },
    }, [d.x, d.succeeded, d.failed, d.other]);
  }

  // The dashboard: hit rate and queue depth per half hour over the last day.
  function timeAxis() { return Object.assign({}, AXIS); }
  var hitRate = document.getElementById("hit-rate");
  var t = hitRate && data("hit-rate");
  if (t) {
    draw(hitRate, {
      height: 180,
      scales: { y: { range: [0, 100] } },
      axes: [timeAxis(), Object.assign({ values: function (u, ticks) {
        return ticks.map(function (v) { return v + "%"; }); } }, AXIS)],
      series: [{}, { label: "cache hit rate", stroke: LINK, width: 2, spanGaps: true,
                     points: { show: true, size: 5, fill: LINK },
                     value: function (u, v) { return v == null ? "no requests" : v + "%"; } }],
    }, [t.t, t.hit_rate]);
  }
  var queueDepth = document.getElementById("queue-depth");
  var q = queueDepth && data("queue-depth");
  if (q) {
    draw(queueDepth, {
      height: 180,
      scales: { y: { range: function (u, min, max) { return [0, Math.max(4, max || 0)]; } } },
      axes: [timeAxis(), Object.assign({ values: function (u, ticks) {
        return ticks.map(function (v) { return Number.isInteger(v) ? String(v) : ""; }); } }, AXIS)],
      series: [{}, { label: "queued builds (most at once)", stroke: RUN, fill: RUN + "33",
                     paths: uPlot.paths.stepped({ align: 1 }), spanGaps: false,
                     points: { show: false },
                     value: function (u, v) { return v == null ? "no data" : String(v); } }],
    }, [q.t, q.queued]);
  }
})();
