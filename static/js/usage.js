// /dashboard/usage/: draws the charts with uPlot (static/vendor/uplot) from the numbers the
// page's tables hold (embedded as JSON by the view). Without JavaScript the tables remain.
(function () {
  "use strict";
  var source = document.getElementById("usage-chart-data");
  if (!source || typeof uPlot === "undefined") { return; }
  var data = JSON.parse(source.textContent);
  var palette = ["#4f46e5", "#0ea5e9", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#14b8a6",
                 "#f97316", "#64748b", "#ec4899"];
  var hourly = data.granularity === "hour";

  function width(figure) {
    return Math.max(260, Math.floor(figure.getBoundingClientRect().width));
  }

  // Ticks on whole buckets only: by day, never three ticks labelled with the same date.
  var DAY = 86400;
  var timeIncrs = hourly ? [3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, DAY, 2 * DAY]
    : [DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY];

  // Value ticks with as many decimals as their step needs (a cost axis of $0.0002 steps
  // read "0, 0, 0, 0.001" with uPlot's default of at most 3 decimals).
  function valueTicks(u, splits) {
    var step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : 1;
    var decimals = step > 0 ? Math.min(10, Math.max(0, Math.ceil(-Math.log10(step) - 1e-9))) : 0;
    return splits.map(function (v) { return v.toFixed(decimals); });
  }

  // Half a bucket of room at each end, so the first and last bars are drawn whole.
  var xScale = {
    time: true,
    range: function (u, min, max) {
      var half = (hourly ? 3600 : DAY) / 2;
      return [min - half, max + half];
    },
  };

  function timeAxis() {
    return {
      incrs: timeIncrs,
      values: function (u, splits) {
        return splits.map(function (s) {
          var d = new Date(s * 1000);
          var day = d.toISOString().slice(5, 10);
          return hourly ? day + " " + d.toISOString().slice(11, 16) : day;
        });
      },
    };
  }

  // Stacked bars: each series is drawn as the cumulative sum up to it, the top one first, so
  // that each band shows its own share; the legend shows each group's own value.
  function stacked(figure, rows, unit) {
    var n = data.buckets.length;
    var cumulative = [];
    var running = new Array(n).fill(0);
    rows.forEach(function (values) {
      running = running.map(function (v, i) { return v + values[i]; });
      cumulative.push(running.slice());
    });
    var series = [{}];
    var columns = [data.buckets];
    for (var g = rows.length - 1; g >= 0; g--) {
      (function (index) {
        series.push({
          label: data.groups[index],
          fill: palette[index % palette.length],
          stroke: palette[index % palette.length],
          width: 0,
          paths: uPlot.paths.bars({ size: [0.7, 60] }),
          points: { show: false },
          value: function (u, v, si, i) {
            return i == null ? "–" : String(rows[index][i]) + (unit === "USD" ? " $" : "");
          },
        });
        columns.push(cumulative[index]);
      })(g);
    }
    if (rows.length === 0) {
      series.push({ label: "none", stroke: "#94a3b8" });
      columns.push(new Array(n).fill(0));
    }
    return new uPlot({
      width: width(figure), height: 220,
      series: series,
      scales: { x: xScale, y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } } },
      axes: [timeAxis(), { size: 60, values: valueTicks }],
      cursor: { drag: { x: false, y: false } },
    }, columns, figure.querySelector(".chart-canvas"));
  }

  function latency(figure) {
    var l = data.latency;
    return new uPlot({
      width: width(figure), height: 220,
      series: [
        {},
        { label: "p50 ms", stroke: "#4f46e5", width: 2, scale: "ms", spanGaps: false },
        { label: "p95 ms", stroke: "#f59e0b", width: 2, scale: "ms", spanGaps: false },
        { label: "error rate %", stroke: "#ef4444", width: 1, dash: [4, 4], scale: "pct" },
      ],
      scales: { x: xScale, pct: { range: [0, 100] } },
      axes: [timeAxis(), { scale: "ms", size: 60, values: valueTicks }, { scale: "pct", side: 1, grid: { show: false } }],
    }, [data.buckets, l.p50, l.p95, l.error_rate], figure.querySelector(".chart-canvas"));
  }

  var plots = [];
  document.querySelectorAll("figure.chart[data-chart]").forEach(function (figure) {
    var name = figure.getAttribute("data-chart");
    var plot = name === "latency" ? latency(figure)
      : stacked(figure, data.stacked[name] || [], figure.getAttribute("data-unit"));
    figure.uplot = plot;  // the drawn numbers, for whoever inspects the page
    figure.setAttribute("data-rendered", "true");
    plots.push([plot, figure]);
    var details = figure.parentNode.querySelector("details.chart-table");
    if (details) { details.open = false; }
  });
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      plots.forEach(function (p) { p[0].setSize({ width: width(p[1]), height: 220 }); });
    }, 150);
  });
})();
