// The console's only script (the CSP allows scripts from this origin only, none inline).
// Charts: an element [data-chart="ID"] is drawn from the ECharts option in <script type="application/json" id="ID">.
// Tests read a chart's data through ECharts' own API: echarts.getInstanceByDom(el).getOption().
(function () {
  "use strict";
  function draw() {
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      var source = document.getElementById(el.getAttribute("data-chart"));
      if (!source || typeof echarts === "undefined") { return; }
      var chart = echarts.init(el, null, { renderer: "svg" });
      chart.setOption(JSON.parse(source.textContent));
      window.addEventListener("resize", function () { chart.resize(); });
    });
  }
  // A form with data-confirm asks before it is sent (pausing a campaign, cancelling a payout …).
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", draw); } else { draw(); }
})();
