// Refreshes the live part of the page and draws the charts from /api/status, every two
// seconds, without reloading. Without it the page still shows the numbers of its load.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var charts = document.getElementById("charts");
  function chart(title, values, unit) {
    var w = 360, h = 90, max = Math.max.apply(null, values.concat([1e-9]));
    var step = values.length > 1 ? w / (values.length - 1) : w;
    var points = values.map(function (v, i) {
      return (i * step).toFixed(1) + "," + (h - 4 - (v / max) * (h - 8)).toFixed(1);
    }).join(" ");
    var last = values.length ? values[values.length - 1] : 0;
    return '<figure class="chart"><figcaption>' + title + ": " + last.toFixed(1) + " " + unit +
      " now, " + max.toFixed(1) + " at most</figcaption>" +
      '<svg width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + " " + h + '"><polyline points="' +
      points + '"/></svg></figure>';
  }
  function draw(s) {
    var sec = s.seconds || [];
    charts.innerHTML =
      chart("requests per second", sec.map(function (x) { return x.requests; }), "/s") +
      chart("MiB per second", sec.map(function (x) { return (x.bytes_in + x.bytes_out) / 1048576; }), "MiB/s") +
      chart("mean latency", sec.map(function (x) { return x.mean_latency_ms; }), "ms");
  }
  function tick() {
    Promise.all([
      fetch("live", { cache: "no-store" }).then(function (r) { if (!r.ok) throw r.status; return r.text(); }),
      fetch("api/status", { cache: "no-store" }).then(function (r) { if (!r.ok) throw r.status; return r.json(); })
    ]).then(function (got) {
      live.innerHTML = got[0];
      draw(got[1]);
      document.body.classList.remove("stale");
    }).catch(function () {
      document.body.classList.add("stale");
    });
  }
  tick();
  setInterval(tick, 2000);
})();
